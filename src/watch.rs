//! Watching a mounted Secret or ConfigMap directory for changes.
//!
//! The kubelet updates such a volume by swapping one `..data` symlink (see
//! `AtomicWriter` in the Kubernetes sources), so a watch on a single file dies after the first
//! update. This module therefore watches whole directories, non-recursively, and treats every
//! event only as a hint: after a short quiet period it calls back once, and the callback re-reads
//! everything it cares about. A periodic rescan covers events the kernel dropped.
//!
//! It deliberately knows nothing of keys or certificates: callers build and validate a complete
//! snapshot in the callback and swap it in only if it is good.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

/// How a directory watch behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after the last event before the callback runs.
    pub debounce: Duration,
    /// Interval of the safety-net rescan, whatever the events say.
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            rescan: Duration::from_secs(30),
        }
    }
}

/// Watches `dirs` on a dedicated thread and calls `on_change` after each burst of events and
/// at every rescan interval. The thread runs for the life of the process.
///
/// A directory that does not exist yet is not an error: the rescan keeps calling back, so a
/// volume that appears later is still picked up.
pub fn spawn<F>(name: &str, dirs: Vec<PathBuf>, options: WatchOptions, mut on_change: F)
where
    F: FnMut() + Send + 'static,
{
    let name = name.to_string();
    let spawned = thread::Builder::new()
        .name(format!("watch-{name}"))
        .spawn(move || {
            let (tx, rx) = mpsc::channel::<()>();
            let watcher =
                notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
                    // Any event, even an error, only means "look again".
                    let _ = tx.send(());
                });
            let mut watcher = match watcher {
                Ok(w) => Some(w),
                Err(error) => {
                    tracing::warn!(watch = %name, %error, "file watcher unavailable, rescan only");
                    None
                }
            };
            if let Some(w) = watcher.as_mut() {
                for dir in &dirs {
                    if let Err(error) = w.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(
                            watch = %name, dir = %dir.display(), %error,
                            "cannot watch directory, relying on periodic rescan"
                        );
                    }
                }
            }
            run_loop(&rx, &options, &mut on_change);
            drop(watcher);
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the file watch thread");
    }
}

/// Waits for events or the rescan deadline; coalesces bursts into one callback.
fn run_loop<F: FnMut()>(rx: &mpsc::Receiver<()>, options: &WatchOptions, on_change: &mut F) {
    let mut next_rescan = Instant::now() + options.rescan;
    loop {
        let wait = next_rescan.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(()) => {
                // Debounce: keep draining until the directory has been quiet for a while.
                while rx.recv_timeout(options.debounce).is_ok() {}
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // No watcher: fall back to sleeping until the next rescan.
                thread::sleep(wait);
            }
        }
        on_change();
        next_rescan = Instant::now() + options.rescan;
    }
}
