//! Helpers shared by the integration tests: admission fixtures and patch application, a small
//! test PKI, a kubelet-style Secret directory, a TLS client, and the webhook binary on an
//! ephemeral port.
//!
//! Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};
use serde_json::Value;

// ---- admission fixtures -------------------------------------------------------------------

/// The fixture `tests/fixtures/admission/<name>.json` as JSON.
pub fn fixture(name: &str) -> Result<Value> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/admission/{name}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Decodes a review the way the webhook does.
pub fn request(review: &Value) -> Result<AdmissionRequest<DynamicObject>> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(review.clone())?;
    review.try_into().context("review without a request")
}

/// The pod in `review` with the response's JSONPatch applied (unchanged when there is none).
pub fn patched_pod(review: &Value, response: &AdmissionResponse) -> Result<Value> {
    let mut pod = review["request"]["object"].clone();
    if let Some(bytes) = &response.patch {
        let patch: json_patch::Patch = serde_json::from_slice(bytes)?;
        json_patch::patch(&mut pod, &patch).context("applying the webhook's patch")?;
    }
    Ok(pod)
}

/// Writes a mutated pod for `ci/validate-k8s.sh` when `PORTCULLIS_MUTATED_PODS_DIR` is set.
pub fn write_pod(name: &str, pod: &Value) -> Result<()> {
    let Some(dir) = std::env::var_os("PORTCULLIS_MUTATED_PODS_DIR") else {
        return Ok(());
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let mut pod = pod.clone();
    // A pod from a ReplicaSet has only generateName; a validator wants a name.
    if pod["metadata"]["name"].is_null() {
        pod["metadata"]["name"] = Value::from(format!("{name}-x1y2z"));
    }
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&pod)?,
    )?;
    Ok(())
}

// ---- a small PKI ---------------------------------------------------------------------------

/// A PEM certificate (leaf first, then its issuer) and key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub fingerprint: String,
}

/// A throw-away CA.
pub struct TestCa {
    cert: X509,
    key: PKey<Private>,
}

fn new_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn builder(common_name: &str, key: &PKey<Private>, days: (i64, i64)) -> Result<X509Builder> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;

    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_pubkey(key)?;
    let (not_before, not_after) = (
        Asn1Time::from_unix(now + days.0 * 86_400)?,
        Asn1Time::from_unix(now + days.1 * 86_400)?,
    );
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    Ok(builder)
}

impl TestCa {
    pub fn new(common_name: &str) -> Result<Self> {
        let key = new_key()?;
        let mut builder = builder(common_name, &key, (-1, 30))?;
        let mut issuer = X509NameBuilder::new()?;
        issuer.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        builder.set_issuer_name(&issuer.build())?;
        builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        builder.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        builder.sign(&key, MessageDigest::sha256())?;
        Ok(Self {
            cert: builder.build(),
            key,
        })
    }

    pub fn cert_pem(&self) -> Result<Vec<u8>> {
        Ok(self.cert.to_pem()?)
    }

    /// A serving certificate for `localhost` and 127.0.0.1, valid from yesterday.
    pub fn issue(&self) -> Result<Issued> {
        self.issue_valid(-1, 30)
    }

    /// One whose validity ended yesterday.
    pub fn issue_expired(&self) -> Result<Issued> {
        self.issue_valid(-10, -1)
    }

    fn issue_valid(&self, from_days: i64, to_days: i64) -> Result<Issued> {
        let key = new_key()?;
        let mut builder = builder("localhost", &key, (from_days, to_days))?;
        builder.set_issuer_name(self.cert.subject_name())?;
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&builder.x509v3_context(Some(&self.cert), None))?;
        builder.append_extension(san)?;
        builder.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        builder.sign(&self.key, MessageDigest::sha256())?;
        let cert = builder.build();

        let mut cert_pem = cert.to_pem()?;
        cert_pem.extend_from_slice(&self.cert.to_pem()?);
        Ok(Issued {
            cert_pem,
            key_pem: key.private_key_to_pem_pkcs8()?,
            fingerprint: fingerprint(&cert)?,
        })
    }
}

pub fn fingerprint(cert: &X509) -> Result<String> {
    let digest = cert.digest(MessageDigest::sha256())?;
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

// ---- a kubelet-style Secret volume ---------------------------------------------------------

/// A directory updated the way the kubelet's AtomicWriter does it: files are symlinks into
/// `..data`, itself a symlink to a timestamped directory that each update replaces atomically.
pub struct SecretDir {
    pub path: PathBuf,
    generation: u32,
}

impl SecretDir {
    pub fn new(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            generation: 0,
        })
    }

    /// Publishes a new payload in one atomic rename, then removes the previous one.
    pub fn publish(&mut self, files: &[(&str, &[u8])]) -> Result<()> {
        self.generation += 1;
        let stamp = format!(
            "..2026_12_03_22_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        let payload = self.path.join(&stamp);
        std::fs::create_dir(&payload)?;
        for (name, content) in files {
            std::fs::write(payload.join(name), content)?;
        }

        let data = self.path.join("..data");
        let old = std::fs::read_link(&data).ok();
        let tmp = self.path.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp)?;
        std::fs::rename(&tmp, &data)?;

        for (name, _) in files {
            let visible = self.path.join(name);
            if std::fs::symlink_metadata(&visible).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &visible)?;
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.path.join(old))?;
        }
        Ok(())
    }
}

// ---- a TLS client ----------------------------------------------------------------------------

/// One HTTP response over TLS, with the fingerprint of the certificate the server presented.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub served_fingerprint: String,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// Sends one request to `https://localhost:<port><path>`, trusting only `ca_pem`.
pub fn https(port: u16, ca_pem: &[u8], method: &str, path: &str, body: &[u8]) -> Result<Reply> {
    let mut connector = SslConnector::builder(SslMethod::tls_client())?;
    connector
        .cert_store_mut()
        .add_cert(X509::from_pem(ca_pem)?)?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = connector.build().connect("localhost", tcp)?;
    let peer = tls
        .ssl()
        .peer_certificate()
        .context("no server certificate")?;
    let served_fingerprint = fingerprint(&peer)?;

    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    tls.write_all(body)?;
    tls.flush()?;

    let (status, body) = read_response(&mut BufReader::new(tls))?;
    Ok(Reply {
        status,
        body,
        served_fingerprint,
    })
}

fn read_response(reader: &mut impl BufRead) -> Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}

// ---- the webhook binary ----------------------------------------------------------------------

/// A free port on 127.0.0.1 (the OS picks it; there is a small window before the server binds).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `portcullis inject` running on an ephemeral port; killed when dropped.
pub struct Webhook {
    child: Child,
    pub port: u16,
}

impl Webhook {
    /// Starts the binary with the certificate in `tls_dir` and waits until `/healthz` answers.
    /// A port taken between `free_port` and the bind makes the binary exit: try another.
    pub fn start(tls_dir: &Path, ca_pem: &[u8], extra: &[&str]) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_once(tls_dir, ca_pem, extra) {
                Ok(webhook) => return Ok(webhook),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("webhook did not start")))
    }

    fn start_once(tls_dir: &Path, ca_pem: &[u8], extra: &[&str]) -> Result<Self> {
        let port = free_port()?;
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("inject")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(tls_dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(tls_dir.join("tls.key"))
            .args(["--sidecar-image", "portcullis:test", "--log-format", "text"])
            .args(extra)
            .env("RUST_LOG", "warn,portcullis=debug")
            .stdin(Stdio::null())
            .spawn()?;
        let mut webhook = Self { child, port };
        webhook.wait_healthy(ca_pem)?;
        Ok(webhook)
    }

    fn wait_healthy(&mut self, ca_pem: &[u8]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("portcullis inject exited early: {status}");
            }
            let reply = https(self.port, ca_pem, "GET", "/healthz", b"");
            if reply.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "portcullis inject did not become healthy on port {}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns true or `within` has passed.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
