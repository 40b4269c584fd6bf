//! Context handles: how an outbound call continues an inbound user request (RFC 8693 actor).
//!
//! When a request is authenticated inbound with a user's token, the app is handed an opaque,
//! unguessable handle (`x-portcullis-context`). The app propagates it on its outbound calls
//! like a trace header; the egress side looks it up here and mints a token carrying the user as
//! `sub` and this service as `act.sub`. A handle lives for its request plus a short grace
//! period, exists only in this process (a handle from another pod is simply unknown), and a
//! forged or expired one is refused, never downgraded to the service's own identity.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mint::random_id;

/// The header that carries a handle, inbound to the app and from the app to the egress side.
pub const CONTEXT_HEADER: &str = "x-portcullis-context";

/// Upper bound on live handles: a flood of requests cannot grow memory without limit.
const MAX_HANDLES: usize = 100_000;

/// Who the inbound request was from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub roles: Vec<String>,
}

#[derive(Debug)]
struct Entry {
    caller: Caller,
    /// `None` while the request is in flight.
    expires: Option<Instant>,
}

/// Why a handle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("unknown context handle (forged, from another pod, or long expired)")]
    Unknown,
    #[error("expired context handle")]
    Expired,
}

/// The live handles of this process.
pub struct ContextStore {
    grace: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl ContextStore {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a handle for an inbound request; `None` when the store is full.
    pub fn open(&self, caller: Caller) -> Option<String> {
        let handle = random_id();
        let mut entries = self.entries.lock().ok()?;
        if entries.len() >= MAX_HANDLES {
            sweep(&mut entries, self.grace);
            if entries.len() >= MAX_HANDLES {
                return None;
            }
        }
        entries.insert(
            handle.clone(),
            Entry {
                caller,
                expires: None,
            },
        );
        Some(handle)
    }

    /// Marks the request of `handle` as finished: the grace period starts now.
    pub fn close(&self, handle: &str) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if let Some(entry) = entries.get_mut(handle) {
            entry.expires = Some(Instant::now() + self.grace);
        }
        if entries.len() % 1024 == 0 {
            sweep(&mut entries, self.grace);
        }
    }

    /// The caller behind a handle.
    pub fn lookup(&self, handle: &str) -> Result<Caller, ContextError> {
        let entries = self.entries.lock().map_err(|_| ContextError::Unknown)?;
        let entry = entries.get(handle).ok_or(ContextError::Unknown)?;
        match entry.expires {
            Some(at) if Instant::now() >= at => Err(ContextError::Expired),
            _ => Ok(entry.caller.clone()),
        }
    }
}

/// Drops handles whose grace period ended long enough ago that "expired" is no longer useful.
fn sweep(entries: &mut HashMap<String, Entry>, grace: Duration) {
    let now = Instant::now();
    entries.retain(|_, e| {
        e.expires
            .is_none_or(|at| at + grace.max(Duration::from_secs(30)) > now)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bob() -> Caller {
        Caller {
            subject: "bob".into(),
            roles: vec!["user".into()],
        }
    }

    #[test]
    fn a_handle_is_valid_during_its_request_and_its_grace_period() {
        let store = ContextStore::new(Duration::from_millis(50));
        let h = store.open(bob()).expect("handle");
        assert_eq!(store.lookup(&h), Ok(bob()));
        store.close(&h);
        assert_eq!(store.lookup(&h), Ok(bob()));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(store.lookup(&h), Err(ContextError::Expired));
    }

    #[test]
    fn forged_handles_are_unknown() {
        let store = ContextStore::new(Duration::from_secs(5));
        let h = store.open(bob()).expect("handle");
        assert_eq!(store.lookup("made-up"), Err(ContextError::Unknown));
        assert_ne!(store.open(bob()).expect("second"), h, "handles are random");
    }
}
