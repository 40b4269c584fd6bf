//! TLS for the inbound listener (server certificate, optional or required client certificates
//! with SPIFFE identities) and for outbound routes (own client certificate, trusted CA).
//!
//! Certificate, key and client CA bundle are PEM files, usually in a mounted Secret. They are
//! read as one snapshot (re-read until key and certificate match, since a reader can straddle a
//! kubelet swap), validated, and swapped in atomically; every handshake takes the current
//! snapshot in pingora's certificate callback, so new handshakes use new files and a broken
//! update changes nothing but a counter and a warning. After the handshake, the peer's verified
//! certificate is reduced to one identity (its SPIFFE URI SAN, or a DNS SAN where configured).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use pingora::listeners::TlsAccept;
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::TlsRef;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::SslVerifyMode;
use pingora::tls::x509::X509;
use pingora::tls::x509::store::X509StoreBuilder;
use pingora::utils::tls::CertKey;

use crate::watch::{self, WatchOptions};

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates are asked for.
    Off,
    /// A presented certificate must verify; none is fine.
    Optional,
    /// The handshake fails without a verified client certificate.
    Required,
}

/// Which certificate name is the peer's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PeerIdentityKind {
    /// The single `spiffe://` URI SAN.
    Spiffe,
    /// The first DNS SAN.
    Dns,
}

/// Paths and policy of the inbound TLS listener.
#[derive(Debug, Clone)]
pub struct ServerTlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub peer_identity: PeerIdentityKind,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {file}: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error("{file} holds no PEM certificate")]
    NoCertificate { file: PathBuf },
    #[error("{file} is not a PEM private key")]
    BadKey { file: PathBuf },
    #[error("the private key does not match the certificate (files changed while being read?)")]
    KeyMismatch,
    #[error("the certificate in {file} expired at {not_after}")]
    Expired { file: PathBuf, not_after: String },
}

/// One complete set of TLS material.
pub struct TlsSnapshot {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    pub client_cas: Vec<X509>,
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| TlsError::Unreadable {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads certificates from a PEM file.
pub fn read_certs(file: &Path) -> Result<Vec<X509>, TlsError> {
    let certs = X509::stack_from_pem(&read(file)?).map_err(|_| TlsError::NoCertificate {
        file: file.to_path_buf(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads a certificate chain and its key, retrying while they do not match.
pub fn read_pair(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<X509>, PKey<Private>), TlsError> {
    let mut last = TlsError::KeyMismatch;
    for _ in 0..3 {
        let chain = read_certs(cert_file)?;
        let key = PKey::private_key_from_pem(&read(key_file)?).map_err(|_| TlsError::BadKey {
            file: key_file.to_path_buf(),
        })?;
        let matches = chain[0]
            .public_key()
            .map(|pk| pk.public_eq(&key))
            .unwrap_or(false);
        if matches {
            let expired = Asn1Time::days_from_now(0)
                .map(|now| chain[0].not_after() < now)
                .unwrap_or(false);
            if expired {
                let not_after = chain[0].not_after().to_string();
                return Err(TlsError::Expired {
                    file: cert_file.to_path_buf(),
                    not_after,
                });
            }
            return Ok((chain, key));
        }
        last = TlsError::KeyMismatch;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(last)
}

/// The live server TLS material, reloaded from its files.
pub struct ServerTls {
    pub settings: ServerTlsSettings,
    current: ArcSwapOption<TlsSnapshot>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl ServerTls {
    /// Loads the files once (an error here is fatal: no listener without a certificate).
    pub fn load(settings: ServerTlsSettings) -> Result<Arc<Self>, TlsError> {
        let tls = Arc::new(Self {
            settings,
            current: ArcSwapOption::empty(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        });
        let snapshot = tls.read_snapshot()?;
        tls.current.store(Some(Arc::new(snapshot)));
        Ok(tls)
    }

    fn read_snapshot(&self) -> Result<TlsSnapshot, TlsError> {
        let (chain, key) = read_pair(&self.settings.cert_file, &self.settings.key_file)?;
        let client_cas = match &self.settings.client_ca_file {
            Some(file) => read_certs(file)?,
            None => Vec::new(),
        };
        Ok(TlsSnapshot {
            chain,
            key,
            client_cas,
        })
    }

    pub fn current(&self) -> Option<Arc<TlsSnapshot>> {
        self.current.load_full()
    }

    /// Re-reads the files; swaps only a complete, matching set that differs from the current.
    pub fn reload(&self) {
        match self.read_snapshot() {
            Ok(new) => {
                let same = self.current().is_some_and(|old| same_material(&old, &new));
                if !same {
                    self.current.store(Some(Arc::new(new)));
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    let cert = self.settings.cert_file.display().to_string();
                    tracing::info!(%cert, "tls certificate reloaded");
                }
            }
            Err(error) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "tls update rejected, previous certificate keeps serving");
            }
        }
    }

    /// Watches the directories of the files.
    pub fn watch(self: &Arc<Self>, rescan: std::time::Duration) {
        let mut dirs: Vec<PathBuf> = [
            Some(&self.settings.cert_file),
            Some(&self.settings.key_file),
            self.settings.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
        dirs.sort();
        dirs.dedup();
        let me = self.clone();
        watch::spawn(
            "tls",
            dirs,
            WatchOptions {
                rescan,
                ..WatchOptions::default()
            },
            move || me.reload(),
        );
    }
}

fn same_material(a: &TlsSnapshot, b: &TlsSnapshot) -> bool {
    let der = |certs: &[X509]| {
        certs
            .iter()
            .map(|c| c.to_der().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    der(&a.chain) == der(&b.chain)
        && der(&a.client_cas) == der(&b.client_cas)
        && a.key.private_key_to_der().ok() == b.key.private_key_to_der().ok()
}

/// The peer identity attached to a TLS connection after its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A verified certificate with a valid identity.
    Verified(String),
    /// A verified certificate without a usable identity; the reason says why.
    Unusable(&'static str),
}

/// pingora's per-handshake hooks: pick the current certificate, ask for a client certificate
/// as configured, and read the verified peer's identity afterwards.
pub struct Callbacks(pub Arc<ServerTls>);

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let Some(snap) = self.0.current() else { return };
        if let Err(error) = install(ssl, &snap, self.0.settings.client_auth) {
            tracing::warn!(%error, "cannot set up the tls handshake");
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let cert = ssl.peer_certificate()?;
        Some(Arc::new(peer_identity(
            &cert,
            self.0.settings.peer_identity,
        )))
    }
}

fn install(
    ssl: &mut TlsRef,
    snap: &TlsSnapshot,
    client_auth: ClientAuth,
) -> Result<(), pingora::tls::error::ErrorStack> {
    ssl.set_certificate(&snap.chain[0])?;
    for intermediate in &snap.chain[1..] {
        ssl.add_chain_cert(intermediate.clone())?;
    }
    ssl.set_private_key(&snap.key)?;
    let mode = match client_auth {
        ClientAuth::Off => return Ok(()),
        ClientAuth::Optional => SslVerifyMode::PEER,
        ClientAuth::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
    };
    let mut store = X509StoreBuilder::new()?;
    for ca in &snap.client_cas {
        store.add_cert(ca.clone())?;
    }
    ssl.set_verify_cert_store(store.build())?;
    ssl.set_verify(mode);
    Ok(())
}

/// Reduces a verified certificate to its identity.
pub fn peer_identity(cert: &X509, kind: PeerIdentityKind) -> PeerIdentity {
    let Some(names) = cert.subject_alt_names() else {
        return PeerIdentity::Unusable("client certificate has no subject alternative name");
    };
    match kind {
        PeerIdentityKind::Dns => match names.iter().find_map(|n| n.dnsname().map(str::to_string)) {
            Some(dns) => PeerIdentity::Verified(dns),
            None => PeerIdentity::Unusable("client certificate has no DNS name"),
        },
        PeerIdentityKind::Spiffe => {
            let uris: Vec<&str> = names.iter().filter_map(|n| n.uri()).collect();
            match uris.as_slice() {
                [one] if is_spiffe_id(one) => PeerIdentity::Verified(one.to_string()),
                [_] => PeerIdentity::Unusable("client certificate URI is not a valid SPIFFE ID"),
                [] => PeerIdentity::Unusable("client certificate has no SPIFFE ID"),
                _ => PeerIdentity::Unusable("client certificate has more than one URI SAN"),
            }
        }
    }
}

/// SPIFFE ID rules: `spiffe://<trust-domain>/<path>`, lowercase trust domain of
/// `[a-z0-9._-]`, no port or user info, non-empty path segments other than `.` and `..`, no
/// query or fragment.
pub fn is_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    domain_ok && !path.is_empty() && path.split('/').all(segment_ok)
}

/// TLS material of one outbound route: the CA that signs the server, and optionally this
/// sidecar's own certificate to present.
#[derive(Clone)]
pub struct UpstreamTls {
    pub server_name: String,
    pub ca: Arc<Box<[X509]>>,
    pub client: Option<Arc<ServerTls>>,
}

impl UpstreamTls {
    /// A peer for `addr` with this route's TLS settings and the current client certificate.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.server_name.clone());
        peer.options.ca = Some(self.ca.clone());
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        if let Some(snap) = self.client.as_ref().and_then(|c| c.current()) {
            peer.client_cert_key =
                Some(Arc::new(CertKey::new(snap.chain.clone(), snap.key.clone())));
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_checked() {
        assert!(is_spiffe_id(
            "spiffe://cluster.local/ns/default/sa/reminder"
        ));
        for bad in [
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns//a",
            "spiffe://cluster.local/ns/../a",
            "spiffe://cluster.local:8080/ns/a",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local/ns/a?x=1",
            "https://cluster.local/ns/a",
        ] {
            assert!(!is_spiffe_id(bad), "{bad}");
        }
    }
}
