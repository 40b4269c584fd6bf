//! The HMAC key set, read from a directory laid out as a mounted Kubernetes Secret.
//!
//! Each visible file is one key: its name is the `kid`, its bytes are the raw HS256 key (at
//! least 32 bytes, RFC 7518 §3.2; the bytes are used exactly as stored, a trailing newline
//! included). One file `jwks.json` may instead hold `oct` keys (RFC 7517). A file `current`
//! names the kid that signs outbound tokens; without it the greatest kid signs. The kubelet's
//! hidden `..data` machinery is skipped. A load either yields a complete, valid [`KeySet`] or an
//! error naming the file: [`KeyStore`] swaps in only complete sets, so readers never see half an
//! update and a broken update leaves the last good set serving.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

pub type HmacSha256 = Hmac<Sha256>;

/// Shortest HS256 key accepted (RFC 7518 §3.2: at least the hash output size).
pub const MIN_KEY_BYTES: usize = 32;
/// More keys than this is a mistake, and would make kid-less tokens costly to check.
pub const MAX_KEYS: usize = 32;
/// Name of the optional JWK Set file.
pub const JWKS_FILE: &str = "jwks.json";
/// Name of the optional file that names the signing kid.
pub const CURRENT_FILE: &str = "current";

/// Why a key directory could not be loaded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("cannot read keys directory {dir}: {reason}")]
    UnreadableDir { dir: PathBuf, reason: String },
    #[error("cannot read key file {file}: {reason}")]
    UnreadableFile { file: PathBuf, reason: String },
    #[error("key {file} is {len} bytes; HS256 keys must be at least {MIN_KEY_BYTES} bytes")]
    ShortKey { file: PathBuf, len: usize },
    #[error("no keys in {dir}")]
    Empty { dir: PathBuf },
    #[error("{count} keys in {dir}; at most {MAX_KEYS} are allowed")]
    TooMany { dir: PathBuf, count: usize },
    #[error("{file}: {reason}")]
    BadJwks { file: PathBuf, reason: String },
    #[error("kid {kid:?} is defined twice (a file and jwks.json)")]
    DuplicateKid { kid: String },
    #[error("{file} names kid {kid:?}, which is not in the key set")]
    UnknownCurrent { file: PathBuf, kid: String },
}

/// Use counters of one kid; they survive reloads so rotation can be watched in metrics.
#[derive(Debug, Default)]
pub struct KeyUse {
    pub verifications: AtomicU64,
    pub last_used_unix: AtomicU64,
}

impl KeyUse {
    /// Records one successful verification now.
    pub fn record(&self, now_unix: u64) {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        self.last_used_unix.store(now_unix, Ordering::Relaxed);
    }
}

/// One key, with its HMAC state precomputed so a verification only hashes the message.
pub struct Key {
    pub kid: String,
    secret: Vec<u8>,
    mac: HmacSha256,
    pub usage: Arc<KeyUse>,
}

impl Key {
    fn new(kid: String, secret: Vec<u8>) -> Result<Self, String> {
        let mac = HmacSha256::new_from_slice(&secret).map_err(|e| e.to_string())?;
        Ok(Self {
            kid,
            secret,
            mac,
            usage: Arc::default(),
        })
    }

    /// A fresh HMAC keyed with this key, ready for `update`.
    pub fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    /// The raw key bytes, for signing.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A complete, validated set of keys.
#[derive(Debug)]
pub struct KeySet {
    /// Unique to this loaded set: what the verified-token cache is tied to.
    pub generation: u64,
    /// Sorted by kid.
    keys: Vec<Key>,
    by_kid: HashMap<String, usize>,
    signing: usize,
}

impl KeySet {
    /// Looks a kid up; the kid is an opaque name, never a path.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    /// All keys, sorted by kid (a token without `kid` is tried against each).
    pub fn all(&self) -> &[Key] {
        &self.keys
    }

    /// The key that signs outbound tokens.
    pub fn signing(&self) -> &Key {
        &self.keys[self.signing]
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// True when both sets hold the same kids, bytes and signer.
    fn same_as(&self, other: &KeySet) -> bool {
        self.signing == other.signing
            && self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| a.kid == b.kid && a.secret == b.secret)
    }

    /// Reads a whole key directory.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let raw = read_dir_keys(dir)?;
        let current = read_current(dir)?;
        Self::from_raw(dir, raw, current)
    }

    fn from_raw(
        dir: &Path,
        raw: BTreeMap<String, Vec<u8>>,
        current: Option<String>,
    ) -> Result<Self, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        if raw.len() > MAX_KEYS {
            return Err(KeyError::TooMany {
                dir: dir.to_path_buf(),
                count: raw.len(),
            });
        }
        let mut keys = Vec::with_capacity(raw.len());
        for (kid, secret) in raw {
            let key = Key::new(kid.clone(), secret).map_err(|reason| KeyError::UnreadableFile {
                file: dir.join(&kid),
                reason,
            })?;
            keys.push(key);
        }
        let by_kid: HashMap<String, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.kid.clone(), i))
            .collect();
        let signing = match current {
            Some(kid) => *by_kid.get(&kid).ok_or_else(|| KeyError::UnknownCurrent {
                file: dir.join(CURRENT_FILE),
                kid,
            })?,
            None => keys.len() - 1,
        };
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Self {
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            keys,
            by_kid,
            signing,
        })
    }
}

/// Whether a directory entry is one of the kubelet's hidden ones (`..data`, `..2026_…`).
fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

fn read_dir_keys(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, KeyError> {
    let entries = fs::read_dir(dir).map_err(|e| KeyError::UnreadableDir {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut keys = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| KeyError::UnreadableDir {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if is_hidden(&name) || name == CURRENT_FILE || path.is_dir() {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| KeyError::UnreadableFile {
            file: path.clone(),
            reason: e.to_string(),
        })?;
        if name == JWKS_FILE {
            for (kid, secret) in parse_jwks(&path, &bytes)? {
                insert_key(&mut keys, &path, kid, secret)?;
            }
        } else {
            insert_key(&mut keys, &path, name, bytes)?;
        }
    }
    Ok(keys)
}

fn insert_key(
    keys: &mut BTreeMap<String, Vec<u8>>,
    file: &Path,
    kid: String,
    secret: Vec<u8>,
) -> Result<(), KeyError> {
    if secret.len() < MIN_KEY_BYTES {
        return Err(KeyError::ShortKey {
            file: file.to_path_buf(),
            len: secret.len(),
        });
    }
    if keys.contains_key(&kid) {
        return Err(KeyError::DuplicateKid { kid });
    }
    keys.insert(kid, secret);
    Ok(())
}

fn read_current(dir: &Path) -> Result<Option<String>, KeyError> {
    let path = dir.join(CURRENT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyError::UnreadableFile {
            file: path,
            reason: e.to_string(),
        }),
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    k: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
}

fn parse_jwks(file: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let bad = |reason: String| KeyError::BadJwks {
        file: file.to_path_buf(),
        reason,
    };
    let set: Jwks =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JWK Set: {e}")))?;
    let mut out = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.into_iter().enumerate() {
        if jwk.kty != "oct" {
            return Err(bad(format!(
                "key {i}: kty {:?} is not supported; only \"oct\" keys are",
                jwk.kty
            )));
        }
        if let Some(alg) = jwk.alg.as_deref().filter(|a| *a != "HS256") {
            return Err(bad(format!("key {i}: alg {alg:?}; only HS256 is accepted")));
        }
        if let Some(u) = jwk.use_.as_deref().filter(|u| *u != "sig") {
            return Err(bad(format!(
                "key {i}: use {u:?}; only \"sig\" keys are accepted"
            )));
        }
        let kid = jwk
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad(format!("key {i} has no kid")))?;
        let k = jwk
            .k
            .ok_or_else(|| bad(format!("key {kid:?} has no \"k\"")))?;
        let secret = URL_SAFE_NO_PAD
            .decode(k.trim_end_matches('='))
            .map_err(|_| bad(format!("key {kid:?}: \"k\" is not base64url")))?;
        out.push((kid, secret));
    }
    Ok(out)
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new set is serving.
    Swapped { count: usize },
    /// The directory holds what is already serving.
    Unchanged,
    /// The update was refused; the previous set (if any) keeps serving.
    Rejected(KeyError),
}

/// The live key set, swapped atomically on reload.
pub struct KeyStore {
    dir: PathBuf,
    current: ArcSwapOption<KeySet>,
    /// Why there is no usable set, or why the last update was refused.
    last_error: Mutex<Option<KeyError>>,
    usage: Mutex<HashMap<String, Arc<KeyUse>>>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl KeyStore {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            current: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            usage: Mutex::new(HashMap::new()),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serving set, or `None` when no valid set was ever loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Why the store is not (or was not last) able to load, for `/readyz` and logs.
    pub fn last_error(&self) -> Option<KeyError> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Per-kid use counters, for metrics.
    pub fn usage(&self) -> Vec<(String, Arc<KeyUse>)> {
        let map = match self.usage.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Reads the directory and swaps in the result if it is complete, valid and new.
    pub fn reload(&self) -> ReloadOutcome {
        match KeySet::load(&self.dir) {
            Ok(mut set) => {
                if self.current().is_some_and(|old| old.same_as(&set)) {
                    self.set_error(None);
                    return ReloadOutcome::Unchanged;
                }
                self.attach_usage(&mut set);
                let count = set.len();
                self.current.store(Some(Arc::new(set)));
                self.set_error(None);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                ReloadOutcome::Swapped { count }
            }
            Err(error) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                self.set_error(Some(error.clone()));
                ReloadOutcome::Rejected(error)
            }
        }
    }

    fn set_error(&self, error: Option<KeyError>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }

    /// Gives every key of a new set the counters its kid had before.
    fn attach_usage(&self, set: &mut KeySet) {
        let mut usage = match self.usage.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        for key in &mut set.keys {
            key.usage = usage.entry(key.kid.clone()).or_default().clone();
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Logs a reload's outcome in the project's style: fields first, then a fixed message.
pub fn log_outcome(store: &KeyStore, outcome: &ReloadOutcome) {
    let dir = store.dir().display().to_string();
    match outcome {
        ReloadOutcome::Swapped { count } => {
            let kids = store
                .current()
                .map(|s| s.kids().join(","))
                .unwrap_or_default();
            tracing::info!(%dir, count, %kids, "keys loaded");
        }
        ReloadOutcome::Unchanged => tracing::debug!(%dir, "keys unchanged"),
        ReloadOutcome::Rejected(error) => {
            let serving = store.current().map(|s| s.len()).unwrap_or(0);
            tracing::warn!(
                %dir, %error, serving,
                "key update rejected, previous keys keep serving"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (name, bytes) in files {
            fs::write(d.path().join(name), bytes).expect("write");
        }
        d
    }

    /// A tiny self-cleaning temporary directory, to avoid a dependency for unit tests.
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let n = N.fetch_add(1, Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("portcullis-keys-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).expect("mkdir");
                Self(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const K32: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn short_key_names_the_file() {
        let d = dir_with(&[("a", K32), ("b", b"short")]);
        let e = KeySet::load(d.path()).expect_err("short key");
        assert!(
            matches!(&e, KeyError::ShortKey { file, len: 5 } if file.ends_with("b")),
            "{e}"
        );
    }

    #[test]
    fn greatest_kid_signs_unless_current_names_one() {
        let d = dir_with(&[("2026-01", K32), ("2026-02", K32)]);
        assert_eq!(
            KeySet::load(d.path()).expect("load").signing().kid,
            "2026-02"
        );
        fs::write(d.path().join(CURRENT_FILE), "2026-01\n").expect("write");
        assert_eq!(
            KeySet::load(d.path()).expect("load").signing().kid,
            "2026-01"
        );
        fs::write(d.path().join(CURRENT_FILE), "nope").expect("write");
        assert!(matches!(
            KeySet::load(d.path()),
            Err(KeyError::UnknownCurrent { .. })
        ));
    }

    #[test]
    fn jwks_oct_keys_load_and_other_types_are_refused() {
        let k = URL_SAFE_NO_PAD.encode(K32);
        let good = format!(r#"{{"keys":[{{"kty":"oct","kid":"j1","k":"{k}","alg":"HS256"}}]}}"#);
        let d = dir_with(&[(JWKS_FILE, good.as_bytes())]);
        assert_eq!(KeySet::load(d.path()).expect("load").kids(), vec!["j1"]);
        let rsa = r#"{"keys":[{"kty":"RSA","kid":"r","n":"x","e":"AQAB"}]}"#;
        let d = dir_with(&[(JWKS_FILE, rsa.as_bytes())]);
        assert!(matches!(
            KeySet::load(d.path()),
            Err(KeyError::BadJwks { .. })
        ));
    }

    #[test]
    fn empty_directory_is_an_error_and_store_keeps_last_good_set() {
        let d = dir_with(&[("k1", K32)]);
        let store = KeyStore::new(d.path().to_path_buf());
        assert_eq!(store.reload(), ReloadOutcome::Swapped { count: 1 });
        fs::remove_file(d.path().join("k1")).expect("rm");
        assert!(matches!(
            store.reload(),
            ReloadOutcome::Rejected(KeyError::Empty { .. })
        ));
        assert_eq!(store.current().expect("still serving").kids(), vec!["k1"]);
        assert_eq!(store.reload_failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn unchanged_directory_does_not_swap() {
        let d = dir_with(&[("k1", K32)]);
        let store = KeyStore::new(d.path().to_path_buf());
        store.reload();
        assert_eq!(store.reload(), ReloadOutcome::Unchanged);
    }
}
