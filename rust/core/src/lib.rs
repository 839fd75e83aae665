//! adclick's hot path, free of Python: everything a click needs between the HTTP handler and the 302.
pub mod cache;
pub mod clickid;
pub mod error;
pub mod event;
pub mod geoip;
pub mod ipblock;
pub mod link;
mod loader;
pub mod replica;
pub mod targeting;
pub mod template;
pub mod tracker;
pub mod ua;

pub use error::CoreError;

/// Lowers the calling thread's priority to `nice` (nothing for 0 or less), so a background thread (the shipper,
/// the link replica's loader) competes little with the threads that answer clicks.
pub fn lower_thread_priority(nice: i32) -> std::io::Result<()> {
    if nice <= 0 {
        return Ok(());
    }
    // SAFETY: plain syscalls on this thread's own id; Linux applies PRIO_PROCESS with a thread id to that thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
