//! TC programs attached to the host side of each endpoint's interface.
//!
//! `policy`: the dataplane programs `from_endpoint` / `to_endpoint` (maps in
//! `maps`, parsing in `parse`).
#![no_std]
#![no_main]

mod maps;
mod parse;
mod policy;
mod service;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
