//! A TLS certificate, its private key and an optional CA bundle, read from files that a kubelet
//! (or cert-manager, or a person) replaces while the process runs.
//!
//! [`CertStore`] holds the current [`CertSnapshot`] behind an [`ArcSwap`]. A reload reads every
//! file again, re-reading when the pair does not match (a reader can straddle the kubelet's
//! `..data` symlink swap), checks that the key belongs to the certificate and that the
//! certificate has not expired, and swaps the new snapshot in only then. A bad update is logged,
//! counted and ignored: the last good certificate keeps serving. [`CertResolver`] is the pingora
//! [`TlsAccept`] hook that hands the current snapshot to every new handshake, so a reload needs no
//! restart and never drops a connection.
//!
//! It deliberately does not decide what to do with the CA bundle: a server that verifies client
//! certificates reads it from the snapshot. PEM files are parsed by OpenSSL, as re-exported by
//! pingora, so the same library that terminates TLS judges the files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::tls::TlsRef;
use pingora::tls::error::ErrorStack;
use pingora::tls::ext;
use pingora::tls::hash::MessageDigest;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::x509::X509;
use sha2::{Digest, Sha256};

use crate::watch::{self, WatchOptions};

/// How often a reload reads the files again before it gives up on a pair that does not match.
const READ_ATTEMPTS: u32 = 3;
/// Pause between two such reads: long enough for the kubelet to finish its swap.
const READ_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where the PEM files live. Paths usually point into a mounted Secret, for example cert-manager's
/// `tls.crt`, `tls.key` and `ca.crt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
    /// An optional CA bundle, for verifying peers.
    pub ca: Option<PathBuf>,
}

impl CertPaths {
    /// The directories to watch: each file's parent, once.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        let files = [Some(&self.cert), Some(&self.key), self.ca.as_ref()];
        for file in files.into_iter().flatten() {
            let dir = parent_dir(file);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why a certificate set could not be loaded. Every variant names the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot parse the {what} in {}: {source}", path.display())]
    Parse {
        what: &'static str,
        path: PathBuf,
        source: ErrorStack,
    },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {} expired at {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// One complete, validated set: what a handshake presents and what peers are checked against.
pub struct CertSnapshot {
    chain: Vec<X509>,
    key: PKey<Private>,
    ca: Option<Vec<X509>>,
    fingerprint: String,
    not_after: String,
    source_digest: [u8; 32],
}

impl fmt::Debug for CertSnapshot {
    // The private key stays out of every debug print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSnapshot")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("ca_len", &self.ca.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl CertSnapshot {
    /// The leaf certificate.
    pub fn leaf(&self) -> &X509 {
        // Invariant: `parse` refuses a chain without a certificate.
        &self.chain[0]
    }

    /// The certificates after the leaf, sent along so that peers can build the chain.
    pub fn intermediates(&self) -> &[X509] {
        &self.chain[1..]
    }

    /// The private key of the leaf.
    pub fn key(&self) -> &PKey<Private> {
        &self.key
    }

    /// The CA bundle, when [`CertPaths::ca`] was given.
    pub fn ca_bundle(&self) -> Option<&[X509]> {
        self.ca.as_deref()
    }

    /// SHA-256 of the leaf in lowercase hex: what the logs show to tell certificates apart.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The leaf's expiry, as OpenSSL prints it.
    pub fn not_after(&self) -> &str {
        &self.not_after
    }
}

/// The raw bytes of one read of every file.
struct RawFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl RawFiles {
    fn read(paths: &CertPaths) -> Result<Self, CertError> {
        let ca = match &paths.ca {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        Ok(Self {
            cert: read_file(&paths.cert)?,
            key: read_file(&paths.key)?,
            ca,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.ca.as_ref()] {
            let bytes = part.map(Vec::as_slice).unwrap_or_default();
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        }
        hasher.finalize().into()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the files until they form a valid set, or the last attempt has failed.
fn load_snapshot(paths: &CertPaths) -> Result<CertSnapshot, CertError> {
    let mut attempt = 1;
    loop {
        let result = RawFiles::read(paths).and_then(|raw| parse(paths, &raw));
        match result {
            Ok(snapshot) => return Ok(snapshot),
            Err(error) if attempt >= READ_ATTEMPTS => return Err(error),
            Err(_) => {
                attempt += 1;
                thread::sleep(READ_RETRY_PAUSE);
            }
        }
    }
}

/// Parses and validates one read: a chain, a key that belongs to its leaf, a leaf not expired.
fn parse(paths: &CertPaths, raw: &RawFiles) -> Result<CertSnapshot, CertError> {
    let chain = X509::stack_from_pem(&raw.cert).map_err(|source| CertError::Parse {
        what: "certificate chain",
        path: paths.cert.clone(),
        source,
    })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: paths.cert.clone(),
        });
    };
    let key = PKey::private_key_from_pem(&raw.key).map_err(|source| CertError::Parse {
        what: "private key",
        path: paths.key.clone(),
        source,
    })?;

    let leaf_key = leaf.public_key().map_err(|source| CertError::Parse {
        what: "certificate's public key",
        path: paths.cert.clone(),
        source,
    })?;
    if !leaf_key.public_eq(&key) {
        return Err(CertError::KeyMismatch {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        });
    }

    let not_after = leaf.not_after().to_string();
    if is_expired(leaf) {
        return Err(CertError::Expired {
            path: paths.cert.clone(),
            not_after,
        });
    }

    let ca = match (&paths.ca, &raw.ca) {
        (Some(path), Some(bytes)) => Some(parse_ca(path, bytes)?),
        _ => None,
    };
    let fingerprint = fingerprint(leaf, &paths.cert)?;
    Ok(CertSnapshot {
        chain,
        key,
        ca,
        fingerprint,
        not_after,
        source_digest: raw.digest(),
    })
}

fn parse_ca(path: &Path, bytes: &[u8]) -> Result<Vec<X509>, CertError> {
    let bundle = X509::stack_from_pem(bytes).map_err(|source| CertError::Parse {
        what: "CA bundle",
        path: path.to_path_buf(),
        source,
    })?;
    if bundle.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(bundle)
}

fn is_expired(leaf: &X509) -> bool {
    // If OpenSSL cannot tell the time, the handshake's own checks still apply: do not guess.
    match Asn1Time::days_from_now(0) {
        Ok(now) => leaf.not_after() < now,
        Err(_) => false,
    }
}

fn fingerprint(leaf: &X509, path: &Path) -> Result<String, CertError> {
    let digest = leaf
        .digest(MessageDigest::sha256())
        .map_err(|source| CertError::Parse {
            what: "certificate",
            path: path.to_path_buf(),
            source,
        })?;
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// What a reload did when it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what is already serving; nothing was swapped.
    Unchanged,
    /// A new snapshot is serving.
    Swapped,
}

/// The current certificate set, with counters of what reloads did.
pub struct CertStore {
    name: String,
    paths: CertPaths,
    current: ArcSwap<CertSnapshot>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("name", &self.name)
            .field("paths", &self.paths)
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the first snapshot. Unlike a reload, a failure here is fatal to the caller: there
    /// is nothing to keep serving yet. `name` labels the logs (`inject-tls`, `inbound-tls`).
    pub fn load(name: &str, paths: CertPaths) -> Result<Self, CertError> {
        let snapshot = load_snapshot(&paths)?;
        tracing::info!(
            certs = %name, cert = %paths.cert.display(), fingerprint = %snapshot.fingerprint,
            not_after = %snapshot.not_after, "certificate loaded"
        );
        Ok(Self {
            name: name.to_string(),
            paths,
            current: ArcSwap::from_pointee(snapshot),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// The snapshot serving now. Cheap: one atomic load.
    pub fn current(&self) -> Arc<CertSnapshot> {
        self.current.load_full()
    }

    /// The files this store reads.
    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }

    /// Reads the files again and swaps in what they hold if it is valid and new. On failure the
    /// current snapshot stays, the failure counter goes up and a warning names the cause.
    pub fn reload(&self) -> Result<Reload, CertError> {
        let snapshot = match load_snapshot(&self.paths) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    certs = %self.name, %error, serving = %self.current.load().fingerprint,
                    "certificate reload failed, keeping the previous certificate"
                );
                return Err(error);
            }
        };
        if snapshot.source_digest == self.current.load().source_digest {
            return Ok(Reload::Unchanged);
        }

        tracing::info!(
            certs = %self.name, fingerprint = %snapshot.fingerprint,
            not_after = %snapshot.not_after, "certificate reloaded"
        );
        self.current.store(Arc::new(snapshot));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(Reload::Swapped)
    }

    /// Reloads whenever a directory holding one of the files changes, and at every rescan.
    pub fn watch(self: &Arc<Self>, options: WatchOptions) {
        let store = Arc::clone(self);
        watch::spawn(&self.name, self.paths.dirs(), options, move || {
            // The outcome is already logged and counted by `reload`.
            let _ = store.reload();
        });
    }

    /// How many reloads swapped in a new snapshot.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// How many reloads failed and left the previous snapshot serving.
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }
}

/// The pingora hook that presents the store's current certificate on every handshake.
#[derive(Debug, Clone)]
pub struct CertResolver {
    store: Arc<CertStore>,
}

impl CertResolver {
    pub fn new(store: Arc<CertStore>) -> Self {
        Self { store }
    }

    /// TLS settings for a pingora listener (Mozilla intermediate profile) whose certificate
    /// comes from this resolver. The caller may adjust them further, e.g. ALPN or client auth.
    pub fn into_tls_settings(self) -> Result<TlsSettings, CertError> {
        TlsSettings::with_callbacks(Box::new(self))
            .map_err(|error| CertError::Tls(error.to_string()))
    }
}

#[async_trait]
impl TlsAccept for CertResolver {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let snapshot = self.store.current();
        if let Err(error) = present(ssl, &snapshot) {
            // Without a certificate the handshake fails on its own; say why once here.
            tracing::warn!(certs = %self.store.name, %error, "cannot present the certificate");
        }
    }
}

fn present(ssl: &mut TlsRef, snapshot: &CertSnapshot) -> Result<(), ErrorStack> {
    ext::ssl_use_certificate(ssl, snapshot.leaf())?;
    for cert in snapshot.intermediates() {
        ext::ssl_add_chain_cert(ssl, cert)?;
    }
    ext::ssl_use_private_key(ssl, snapshot.key())
}
