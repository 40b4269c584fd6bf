//! Idle keep-alive connections to the app, one small stack per inbound thread.
//!
//! Each inbound thread runs its own single-threaded runtime, so its pool needs no lock: a
//! thread-local stack, most recently used on top (the warmest connection goes first). A
//! connection is dropped when it has been idle longer than the idle timeout, or when tokio has
//! seen it become readable while idle (the app closed it, or sent bytes nobody asked for).

use std::cell::RefCell;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

thread_local! {
    static IDLE: RefCell<Vec<(TcpStream, Instant)>> = const { RefCell::new(Vec::new()) };
}

/// The pool's limits; the connections themselves live in each thread.
pub struct Pool {
    /// Idle connections kept per thread.
    size: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(size: usize, idle_timeout: Duration) -> Self {
        Self { size, idle_timeout }
    }

    /// An idle connection that still looks open, if there is one.
    pub fn take(&self) -> Option<TcpStream> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            while let Some((stream, since)) = idle.pop() {
                if since.elapsed() > self.idle_timeout {
                    continue;
                }
                // No system call unless the stream was reported readable: an idle connection
                // to a live app never is.
                let mut probe = [0u8; 1];
                match stream.try_read(&mut probe) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(stream),
                    _ => continue,
                }
            }
            None
        })
    }

    /// Keeps a connection whose last response was read completely.
    pub fn put(&self, stream: TcpStream) {
        if self.size == 0 {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.len() >= self.size {
                // The oldest goes first.
                idle.remove(0);
            }
            idle.push((stream, Instant::now()));
        });
    }
}
