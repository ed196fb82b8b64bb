//! A listening socket inside another process's network namespace.
//!
//! A socket belongs to the namespace it was created in, for its whole
//! life, whichever thread later uses it. So a short-lived helper thread
//! joins the container's namespace (`setns`), binds, and exits; genesis
//! then accepts on that socket from its own runtime. Nothing enters the
//! container (no binary, no Python, no libc of the image's), the suite
//! reaches the endpoint on its own loopback with network still off, and
//! what answers it is genesis's memory, which the suite cannot touch.
//!
//! Only the helper thread ever changes namespace, and it ends right after
//! the bind, so no thread of genesis's pools is left inside a sandbox.

use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;

/// Binds `127.0.0.1:port` in the network namespace of process `pid`,
/// non-blocking, ready for tokio.
pub fn bind_in_namespace_of(pid: i64, port: u16) -> std::io::Result<TcpListener> {
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::Builder::new()
        .name("genesis-netns-bind".into())
        .spawn(move || {
            // SAFETY: setns only changes this thread's network namespace;
            // the thread ends when this closure returns.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?
        .join()
        .map_err(|_| std::io::Error::other("the namespace helper thread panicked"))?
}
