//! mTLS on the inbound listener: SPIFFE peer identities, optional and required client
//! certificates, untrusted and expired certificates refused at the handshake, `curl` and
//! `openssl s_client` as independent clients, and certificate rotation under load.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::certs::{self, Issued};
use common::*;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

const SERVER_NAME: &str = "todos.default.svc";

struct Pki {
    ca: Issued,
    dir: std::path::PathBuf,
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: certs::ca("test mesh CA"),
            dir: temp_dir("pki"),
        }
    }

    /// Writes a cert/key pair to files and returns their paths.
    fn write(&self, name: &str, issued: &Issued) -> (String, String) {
        let cert = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert, issued.cert_pem()).expect("cert");
        std::fs::write(&key, issued.key_pem()).expect("key");
        (cert.display().to_string(), key.display().to_string())
    }

    fn ca_file(&self) -> String {
        let path = self.dir.join("ca.crt");
        std::fs::write(&path, self.ca.cert_pem()).expect("ca");
        path.display().to_string()
    }
}

/// A server certificate Secret (tls.crt, tls.key, ca.crt), kubelet-style.
fn server_secret(pki: &Pki) -> KeyDir {
    let server = certs::leaf(&pki.ca, Some(&certs::spiffe("todos")), SERVER_NAME, false);
    KeyDir::new(&[
        ("tls.crt", &server.cert_pem()),
        ("tls.key", &server.key_pem()),
        ("ca.crt", &pki.ca.cert_pem()),
    ])
}

fn tls_args(secret: &Path, client_auth: &str, auth: &str) -> Vec<String> {
    let file = |n: &str| secret.join(n).display().to_string();
    vec![
        "--tls-cert".into(),
        file("tls.crt"),
        "--tls-key".into(),
        file("tls.key"),
        "--tls-client-ca".into(),
        file("ca.crt"),
        "--tls-client-auth".into(),
        client_auth.into(),
        "--auth".into(),
        auth.into(),
    ]
}

fn start(secret: &KeyDir, upstream: &Upstream, client_auth: &str, auth: &str) -> (KeyDir, Sidecar) {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let args = tls_args(&secret.path, client_auth, auth);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &args);
    sidecar.wait_started();
    (keys, sidecar)
}

/// One HTTPS request with an optional client certificate; Err when the handshake fails.
fn https(
    addr: SocketAddr,
    ca: &str,
    client: Option<&Issued>,
    token: Option<&str>,
) -> Result<(Response, Vec<u8>), String> {
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    b.set_ca_file(ca).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::PEER);
    if let Some(c) = client {
        b.set_certificate(&c.cert).map_err(|e| e.to_string())?;
        b.set_private_key(&c.key).map_err(|e| e.to_string())?;
    }
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut stream = b
        .build()
        .connect(SERVER_NAME, tcp)
        .map_err(|e| format!("handshake: {e}"))?;
    let serial = stream
        .ssl()
        .peer_certificate()
        .map(|c| {
            c.serial_number()
                .to_bn()
                .map(|b| b.to_vec())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req =
        format!("GET /todos HTTP/1.1\r\nhost: {SERVER_NAME}\r\nconnection: close\r\n{auth}\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let resp = read_response(&mut BufReader::new(stream));
    if resp.status == 0 {
        return Err("no response (connection closed after the handshake)".into());
    }
    Ok((resp, serial))
}

#[test]
fn a_client_certificate_authenticates_its_spiffe_identity() {
    let pki = Pki::new();
    let secret = server_secret(&pki);
    let upstream = Upstream::start();
    let (_keys, sidecar) = start(&secret, &upstream, "optional", "jwt,mtls");
    let ca = pki.ca_file();

    let reminder = certs::leaf(
        &pki.ca,
        Some(&certs::spiffe("reminder")),
        "reminder.default.svc",
        false,
    );
    let (resp, _) =
        https(sidecar.addr, &ca, Some(&reminder), None).expect("handshake with a trusted cert");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = upstream.last();
    assert_eq!(
        seen.header("x-auth-peer"),
        Some(certs::spiffe("reminder").as_str())
    );
    assert!(seen.header("x-auth-subject").is_none());

    // No certificate, no token: the handshake succeeds (optional), the request is refused.
    let (resp, _) = https(sidecar.addr, &ca, None, None).expect("optional mode allows no cert");
    assert_eq!(resp.status, 401);
    assert!(
        resp.text().contains("client certificate"),
        "{}",
        resp.text()
    );

    // A token alone is enough under [jwt, mtls].
    let (resp, _) = https(sidecar.addr, &ca, None, Some(&good_token())).expect("handshake");
    assert_eq!(resp.status, 200);
    assert_eq!(upstream.last().header("x-auth-subject"), Some("alice"));
}

#[test]
fn untrusted_and_expired_certificates_fail_the_handshake() {
    let pki = Pki::new();
    let secret = server_secret(&pki);
    let upstream = Upstream::start();
    let (_keys, sidecar) = start(&secret, &upstream, "optional", "jwt,mtls");
    let ca = pki.ca_file();

    let rogue_ca = certs::ca("rogue CA");
    let rogue = certs::leaf(
        &rogue_ca,
        Some(&certs::spiffe("reminder")),
        "reminder.default.svc",
        false,
    );
    assert!(
        https(sidecar.addr, &ca, Some(&rogue), None).is_err(),
        "an untrusted CA must fail the handshake"
    );
    let expired = certs::leaf(
        &pki.ca,
        Some(&certs::spiffe("reminder")),
        "reminder.default.svc",
        true,
    );
    assert!(
        https(sidecar.addr, &ca, Some(&expired), None).is_err(),
        "an expired certificate must fail"
    );

    // Without a SPIFFE ID the certificate verifies but names nobody: 401 says why.
    let anonymous = certs::leaf(&pki.ca, None, "reminder.default.svc", false);
    let (resp, _) = https(sidecar.addr, &ca, Some(&anonymous), None).expect("handshake");
    assert_eq!(resp.status, 401);
    assert!(resp.text().contains("no SPIFFE ID"), "{}", resp.text());
    assert!(upstream.requests().is_empty());
}

#[test]
fn required_mode_refuses_a_handshake_without_a_certificate_s_client_and_curl_agree() {
    let pki = Pki::new();
    let secret = server_secret(&pki);
    let upstream = Upstream::start();
    let (_keys, sidecar) = start(&secret, &upstream, "required", "mtls");
    let ca = pki.ca_file();
    let port = sidecar.addr.port().to_string();
    let connect = format!("127.0.0.1:{port}");
    let share = certs::leaf(
        &pki.ca,
        Some(&certs::spiffe("share")),
        "share.default.svc",
        false,
    );
    let (cert, key) = pki.write("share", &share);

    // openssl s_client without a certificate: the server aborts the handshake.
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            SERVER_NAME,
            "-CAfile",
            &ca,
            "-verify_return_error",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(
            format!("GET / HTTP/1.1\r\nhost: {SERVER_NAME}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        );
        // TLS 1.3: the server's alert arrives after the client's side of the handshake.
        thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().expect("s_client output");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("HTTP/1.1 200"),
        "no request may pass without a certificate: {text}"
    );
    assert!(
        text.contains("alert") || text.contains("certificate required"),
        "{text}"
    );

    // openssl s_client with the certificate: verified both ways, the request goes through.
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            SERVER_NAME,
            "-CAfile",
            &ca,
            "-cert",
            &cert,
            "-key",
            &key,
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(
            format!(
                "GET /via-s-client HTTP/1.1\r\nhost: {SERVER_NAME}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().expect("s_client output");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        upstream.last().header("x-auth-peer"),
        Some(certs::spiffe("share").as_str())
    );

    // curl agrees: no cert fails, with the cert it works.
    let url = format!("https://{SERVER_NAME}:{port}/todos");
    let resolve = format!("{SERVER_NAME}:{port}:127.0.0.1");
    let no_cert = Command::new("curl")
        .args(["-s", "--cacert", &ca, "--resolve", &resolve, &url])
        .output()
        .expect("curl");
    assert!(
        !no_cert.status.success(),
        "curl without a certificate must fail"
    );
    let with_cert = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--resolve",
            &resolve,
            &url,
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&with_cert.stdout), "200");
}

#[test]
fn jwt_plus_mtls_needs_both() {
    let pki = Pki::new();
    let secret = server_secret(&pki);
    let upstream = Upstream::start();
    let (_keys, sidecar) = start(&secret, &upstream, "optional", "jwt+mtls");
    let ca = pki.ca_file();
    let share = certs::leaf(
        &pki.ca,
        Some(&certs::spiffe("share")),
        "share.default.svc",
        false,
    );

    let (resp, _) = https(sidecar.addr, &ca, None, Some(&good_token())).expect("handshake");
    assert_eq!(resp.status, 401);
    assert!(resp.text().contains("also required"), "{}", resp.text());
    let (resp, _) = https(sidecar.addr, &ca, Some(&share), None).expect("handshake");
    assert_eq!(resp.status, 401);
    let (resp, _) = https(sidecar.addr, &ca, Some(&share), Some(&good_token())).expect("handshake");
    assert_eq!(resp.status, 200);
    let seen = upstream.last();
    assert_eq!(
        seen.header("x-auth-peer"),
        Some(certs::spiffe("share").as_str())
    );
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
}

#[test]
fn certificate_rotation_during_requests_loses_none_and_broken_updates_are_ignored() {
    let pki = Pki::new();
    let mut secret = server_secret(&pki);
    let upstream = Upstream::start();
    let (_keys, sidecar) = start(&secret, &upstream, "optional", "jwt,mtls");
    let ca = pki.ca_file();
    let client = Arc::new(certs::leaf(
        &pki.ca,
        Some(&certs::spiffe("reminder")),
        "reminder.default.svc",
        false,
    ));
    let (_, first_serial) = https(sidecar.addr, &ca, Some(&client), None).expect("first");

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let worker = {
        let (stop, sent, failed, client, ca) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            client.clone(),
            ca.clone(),
        );
        let addr = sidecar.addr;
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok =
                    matches!(https(addr, &ca, Some(&client), None), Ok((r, _)) if r.status == 200);
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    thread::sleep(Duration::from_millis(300));
    let next = certs::leaf(&pki.ca, Some(&certs::spiffe("todos")), SERVER_NAME, false);
    secret.update(&[
        ("tls.crt", &next.cert_pem()),
        ("tls.key", &next.key_pem()),
        ("ca.crt", &pki.ca.cert_pem()),
    ]);
    let new_serial = next.cert.serial_number().to_bn().expect("bn").to_vec();
    assert!(
        eventually(Duration::from_secs(5), || {
            https(sidecar.addr, &ca, Some(&client), None)
                .map(|(_, s)| s == new_serial)
                .unwrap_or(false)
        }),
        "new handshakes must use the new certificate"
    );

    // A broken update (a key that does not match) is ignored: the new certificate keeps serving.
    let other = certs::leaf(&pki.ca, Some(&certs::spiffe("todos")), SERVER_NAME, false);
    secret.update(&[
        ("tls.crt", &other.cert_pem()),
        ("tls.key", &next.key_pem()),
        ("ca.crt", &pki.ca.cert_pem()),
    ]);
    thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");

    let (_, serial) =
        https(sidecar.addr, &ca, Some(&client), None).expect("after the broken update");
    assert_eq!(serial, new_serial);
    assert_ne!(serial, first_serial);
    assert!(sent.load(Ordering::Relaxed) > 10, "too few requests");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {}",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        sidecar.log_text().contains("tls update rejected"),
        "{}",
        sidecar.log_text()
    );
}
