//! The kernel's run-time statistics of loaded BPF programs, by raw `bpf(2)`
//! calls: the xtask builds on the machine's default toolchain before it
//! installs the pinned one, and aya needs a newer rustc than that.
//!
//! `BPF_ENABLE_STATS` turns counting on while its file descriptor is open (no
//! sysctl is changed); `BPF_PROG_GET_NEXT_ID`, `BPF_PROG_GET_FD_BY_ID` and
//! `BPF_OBJ_GET_INFO_BY_FD` read each program's name, `run_time_ns` and
//! `run_cnt` (`struct bpf_prog_info`, include/uapi/linux/bpf.h).
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
/// Offsets in `struct bpf_prog_info`: `name[16]`, `run_time_ns`, `run_cnt`.
const INFO_NAME: usize = 64;
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;
const INFO_LEN: usize = 208;

/// `bpf(cmd, attr)` with a zeroed 128-byte attribute union.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, writable 128-byte union bpf_attr.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Turns on the run-time statistics until the returned descriptor is closed.
pub fn enable() -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = BPF_STATS_RUN_TIME as u64; // enable_stats.type
    let fd = bpf(BPF_ENABLE_STATS, &mut attr)?;
    // SAFETY: a new descriptor the kernel just returned, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// (name, run time in ns, runs) of every loaded program.
pub fn programs() -> io::Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = id as u64; // start_id
        match bpf(BPF_PROG_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = (attr[0] >> 32) as u32, // next_id
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        let mut attr = [0u64; 16];
        attr[0] = id as u64; // prog_id
        let fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
            // Unloaded in between.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        out.push(info(&fd)?);
    }
}

fn info(fd: &OwnedFd) -> io::Result<(String, u64, u64)> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; INFO_LEN];
    let mut attr = [0u64; 16];
    // info: {u32 bpf_fd; u32 info_len; u64 info}.
    attr[0] = fd.as_raw_fd() as u64 | ((INFO_LEN as u64) << 32);
    attr[1] = buf.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &buf[INFO_NAME..INFO_NAME + 16];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    let u64_at = |at: usize| u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    Ok((
        String::from_utf8_lossy(&name[..end]).into_owned(),
        u64_at(INFO_RUN_TIME_NS),
        u64_at(INFO_RUN_CNT),
    ))
}
