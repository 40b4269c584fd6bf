//! A small cache of verified tokens, one per thread: a repeated token skips the base64, JSON
//! and HMAC work.
//!
//! What keeps it safe:
//! - an entry is found only by the whole token, compared in constant time (the slot is chosen
//!   by a hash of the signature, which only decides where to look);
//! - an entry belongs to one loaded key set ([`KeySet::generation`]): after any reload, a
//!   removed or replaced key included, no entry is found, and the token is verified afresh;
//! - a hit applies the same expiry rule as a fresh verification (`now < exp + leeway`), so the
//!   cache never accepts a token that verification would refuse;
//! - only tokens that passed every check are stored; refusals are never cached.
//!
//! The cache is direct-mapped: a new token replaces whatever shared its slot. Its size is set
//! by `--token-cache` (0 turns it off).

use std::cell::RefCell;
use std::sync::Arc;

use crate::keys::KeySet;
use crate::verify::Claims;

/// Tokens longer than this are verified every time rather than copied into the cache.
const MAX_CACHED_TOKEN: usize = 4096;

/// What a verification established; cheap to clone (three reference counts).
#[derive(Debug, Clone)]
pub struct Established {
    /// The key that verified the signature.
    pub kid: Arc<str>,
    pub claims: Arc<Claims>,
    /// The whole claim set, when the rules or claim headers needed it.
    pub claims_map: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    token: Box<[u8]>,
    generation: u64,
    /// `exp + leeway`: at and after this instant the token is refused.
    expires: f64,
    established: Established,
}

thread_local! {
    static SLOTS: RefCell<Vec<Option<Entry>>> = const { RefCell::new(Vec::new()) };
}

/// The per-thread cache's size; every thread holds at most this many entries.
#[derive(Debug, Clone, Copy)]
pub struct TokenCache {
    slots: usize,
}

impl TokenCache {
    pub fn new(slots: usize) -> Self {
        Self { slots }
    }

    pub fn is_enabled(&self) -> bool {
        self.slots > 0
    }

    fn slot(&self, token: &[u8]) -> usize {
        // The last bytes are the signature: as good as random for a token that verifies.
        let tail = &token[token.len().saturating_sub(16)..];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in tail {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h % self.slots as u64) as usize
    }

    /// The entry for `token` under `keys`, if it is there and the token has not expired.
    pub fn get(&self, token: &str, keys: &KeySet, now: u64) -> Option<Established> {
        if !self.is_enabled() {
            return None;
        }
        let token = token.as_bytes();
        let slot = self.slot(token);
        SLOTS.with_borrow(|slots| {
            let entry = slots.get(slot)?.as_ref()?;
            let hit = entry.generation == keys.generation
                && constant_time_eq(&entry.token, token)
                && (now as f64) < entry.expires;
            hit.then(|| entry.established.clone())
        })
    }

    /// Remembers a token that passed every check; `expires` is its `exp` plus the leeway.
    pub fn put(&self, token: &str, keys: &KeySet, expires: f64, established: &Established) {
        if !self.is_enabled() || token.len() > MAX_CACHED_TOKEN {
            return;
        }
        let slot = self.slot(token.as_bytes());
        SLOTS.with_borrow_mut(|slots| {
            if slots.len() != self.slots {
                slots.clear();
                slots.resize(self.slots, None);
            }
            slots[slot] = Some(Entry {
                token: token.as_bytes().into(),
                generation: keys.generation,
                expires,
                established: established.clone(),
            });
        });
    }
}

/// Equality in time that depends only on the lengths, never on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u64;
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(b.len() / 8 * 8);
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        let x = u64::from_ne_bytes(x.try_into().unwrap_or([0; 8]));
        let y = u64::from_ne_bytes(y.try_into().unwrap_or([0; 8]));
        diff |= x ^ y;
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_every_byte() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abcdefghijk", b"abcdefghijk"));
        assert!(!constant_time_eq(b"abcdefghijk", b"abcdefghijx"));
        assert!(!constant_time_eq(b"xbcdefghijk", b"abcdefghijk"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
