//! The `bpf(2)` map commands a conntrack sweep needs that aya 0.16 does not
//! expose: `BPF_MAP_LOOKUP_BATCH` (read a hash map a few thousand entries per
//! call, not one `get_next_key` and one lookup per entry) and
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (delete an entry and learn what it held at
//! that instant, in one call). Both exist for LRU hash maps since Linux 5.14;
//! the agent needs 6.6.
use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::MapData;
use aya::Pod;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_NOEXIST: u64 = 1;
/// Entries per `BPF_MAP_LOOKUP_BATCH` call (a hash bucket never holds this many).
const BATCH: usize = 4096;

/// `union bpf_attr` for the element commands: map_fd, key, value, flags.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a live, writable `union bpf_attr` prefix of the size
    // passed; the kernel zero-extends the rest. Pointers inside it are set by
    // the callers to buffers that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A hash map of `K` to `V`, reached by its descriptor.
pub(super) struct RawHash<'a, K, V> {
    fd: BorrowedFd<'a>,
    types: PhantomData<(K, V)>,
}

impl<'a, K: Pod, V: Pod> RawHash<'a, K, V> {
    /// `map`, whose keys and values must have the sizes of `K` and `V`.
    pub(super) fn new(map: &'a MapData) -> io::Result<Self> {
        let info = map.info().map_err(io::Error::other)?;
        let sizes = (info.key_size() as usize, info.value_size() as usize);
        if sizes != (size_of::<K>(), size_of::<V>()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "map of {}-byte keys and {}-byte values, expected {} and {}",
                    sizes.0,
                    sizes.1,
                    size_of::<K>(),
                    size_of::<V>()
                ),
            ));
        }
        Ok(RawHash {
            fd: map.fd().as_fd(),
            types: PhantomData,
        })
    }

    fn map_fd(&self) -> u32 {
        self.fd.as_raw_fd() as u32
    }

    /// Calls `each` with every entry, [`BATCH`] entries a call. Entries the
    /// kernel adds or deletes meanwhile may be seen or not, as with any walk
    /// of a live hash map.
    pub(super) fn for_each(&self, mut each: impl FnMut(&K, &V)) -> io::Result<()> {
        let mut keys = vec![MaybeUninit::<K>::uninit(); BATCH];
        let mut values = vec![MaybeUninit::<V>::uninit(); BATCH];
        // The position in the map: a bucket index for hash maps.
        let (mut position, mut next) = (0u64, 0u64);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &mut position as *mut u64 as u64
                },
                out_batch: &mut next as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: self.map_fd(),
                elem_flags: 0,
                flags: 0,
            };
            let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let done = match result {
                Ok(()) => false,
                // The last batch: `count` entries were still written.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) => return Err(e),
            };
            let n = (attr.count as usize).min(BATCH);
            for i in 0..n {
                // SAFETY: the kernel wrote the first `count` keys and values,
                // and `K`, `V` are plain data (Pod).
                let (k, v) = unsafe { (keys[i].assume_init_ref(), values[i].assume_init_ref()) };
                each(k, v);
            }
            if done {
                return Ok(());
            }
            position = next;
            first = false;
        }
    }

    /// Deletes `key`'s entry and returns what it held at that instant, or None
    /// when there was none.
    pub(super) fn take(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = MaybeUninit::<V>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.map_fd(),
            _pad: 0,
            key: key as *const K as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
            // SAFETY: the kernel wrote the value; `V` is plain data.
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Inserts `key` unless it has an entry (which then stays as it is).
    /// Returns whether it inserted.
    pub(super) fn insert_new(&self, key: &K, value: &V) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.map_fd(),
            _pad: 0,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags: BPF_NOEXIST,
        };
        match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
