//! Shared helpers for the real-process tests: a recording upstream, a kubelet-style key
//! directory, the real `portcullis` binary on ephemeral loopback ports, a raw HTTP/1.1 client,
//! tokens minted independently of portcullis (hmac + sha2 directly), and `eventually`.

#![allow(dead_code)]

pub mod certs;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const KEY1: &[u8] = b"k1-secret-0123456789abcdef0123456789";
pub const KEY2: &[u8] = b"k2-secret-abcdefghijklmnopqrstuvwxyz";
pub const IDENTITY: &str = "todos";
pub const ISSUER: &str = "https://issuer.test";

// ---------------------------------------------------------------- time, ports, eventually

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(25));
    }
    f()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("portcullis-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

// ---------------------------------------------------------------- tokens

/// Signs `header.payload` with HMAC-SHA256, independently of portcullis.
pub fn sign(header: &str, payload: &str, key: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac");
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// A valid token for `todos` signed with k1, with `extra` merged into the claims.
pub fn token_with(kid: &str, key: &[u8], extra: serde_json::Value) -> String {
    let mut claims = serde_json::json!({
        "iss": ISSUER, "aud": IDENTITY, "sub": "alice", "exp": now() + 300, "iat": now(),
        "roles": ["reader", "writer"],
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#);
    sign(&header, &claims.to_string(), key)
}

pub fn good_token() -> String {
    token_with("k1", KEY1, serde_json::json!({}))
}

// ---------------------------------------------------------------- kubelet-style key directory

/// A directory laid out and updated exactly as the kubelet's AtomicWriter does it.
pub struct KeyDir {
    pub path: PathBuf,
    generation: u32,
    visible: Vec<String>,
}

impl KeyDir {
    pub fn new(files: &[(&str, &[u8])]) -> Self {
        let mut dir = Self {
            path: temp_dir("keys"),
            generation: 0,
            visible: Vec::new(),
        };
        dir.update(files);
        dir
    }

    /// Writes a new payload: `..<ts>` dir, `..data_tmp` symlink renamed over `..data`, visible
    /// symlinks for new names, stale ones removed, the old payload directory deleted.
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let ts = format!(
            "..2026_12_03_00_00_{:02}.{:09}",
            self.generation, self.generation
        );
        let payload = self.path.join(&ts);
        std::fs::create_dir(&payload).expect("payload dir");
        for (name, bytes) in files {
            std::fs::write(payload.join(name), bytes).expect("write");
        }
        let old = std::fs::read_link(self.path.join("..data")).ok();
        let tmp = self.path.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("symlink tmp");
        std::fs::rename(&tmp, self.path.join("..data")).expect("rename over ..data");
        let names: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        for name in &names {
            let link = self.path.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("visible link");
            }
        }
        for stale in self.visible.iter().filter(|n| !names.contains(n)) {
            let _ = std::fs::remove_file(self.path.join(stale));
        }
        self.visible = names;
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.path.join(old));
        }
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------- recording upstream

/// One request as the app saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
}

/// An HTTP/1.1 app on loopback that records every request. `/slow` answers after 1.5 s;
/// an `Upgrade: websocket` request gets 101 and its bytes echoed back.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// Decides an upstream's answer: status and body.
pub type Handler = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

impl Upstream {
    pub fn start() -> Self {
        Self::start_with(Arc::new(|seen: &Seen| {
            (200, format!("app saw {} {}", seen.method, seen.target))
        }))
    }

    /// An upstream whose answers come from `handler` (which may itself call other services).
    pub fn start_with(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (record, handler) = (record.clone(), handler.clone());
                thread::spawn(move || serve_conn(stream, record, handler));
            }
        });
        Self { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream saw a request")
    }

    pub fn clear(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }
}

fn serve_conn(stream: TcpStream, record: Arc<Mutex<Vec<Seen>>>, handler: Handler) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let Some(seen) = read_request(&mut reader) else {
            return;
        };
        let upgrade = seen
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        let slow = seen.target.starts_with("/slow");
        let (status, body) = handler(&seen);
        if let Ok(mut r) = record.lock() {
            r.push(seen);
        }
        if upgrade {
            let _ = writer.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
            let mut buf = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || writer.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            return;
        }
        if slow {
            thread::sleep(Duration::from_millis(1500));
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-app: yes\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let headers = read_headers(reader)?;
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body = if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        read_chunked(reader)?
    } else {
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

fn read_headers(reader: &mut impl BufRead) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some(headers);
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut chunk = vec![0u8; n + 2];
        reader.read_exact(&mut chunk).ok()?;
        if n == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------- the real binary

/// The portcullis binary: cargo's path in tests; beside the example's directory otherwise.
pub fn bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_portcullis") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("portcullis")
}

/// Calls an egress listener with `Host: host`.
pub fn call_egress(
    egress: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let Ok(mut stream) = TcpStream::connect(egress) else {
        return Response {
            status: 0,
            headers: BTreeMap::new(),
            body: Vec::new(),
        };
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    if stream.write_all(raw.as_bytes()).is_err() {
        return Response {
            status: 0,
            headers: BTreeMap::new(),
            body: Vec::new(),
        };
    }
    read_response(&mut BufReader::new(stream))
}

/// A running `portcullis run`, killed by PID when dropped. Its stderr goes to `log`.
pub struct Sidecar {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Sidecar {
    /// Starts the sidecar with the standard test identity and `extra` arguments.
    pub fn start(keys: &Path, upstream: SocketAddr, extra: &[&str]) -> Self {
        Self::start_as(IDENTITY, keys, upstream, extra)
    }

    /// Starts a sidecar for `identity`, waiting until its admin listener answers.
    pub fn start_as(identity: &str, keys: &Path, upstream: SocketAddr, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::start_at(identity, addr, keys, upstream, extra)
    }

    /// Starts without waiting.
    pub fn spawn(keys: &Path, upstream: SocketAddr, extra: &[&str]) -> Self {
        Self::spawn_as(IDENTITY, keys, upstream, extra)
    }

    pub fn spawn_as(identity: &str, keys: &Path, upstream: SocketAddr, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::spawn_at(identity, addr, keys, upstream, extra)
    }

    /// Starts a sidecar for `identity` listening on `addr`, waiting for its admin listener.
    pub fn start_at(
        identity: &str,
        addr: SocketAddr,
        keys: &Path,
        upstream: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let sidecar = Self::spawn_at(identity, addr, keys, upstream, extra);
        assert!(
            eventually(Duration::from_secs(15), || get(sidecar.admin, "/healthz")
                .status
                == 200),
            "sidecar did not come up; log:\n{}",
            sidecar.log_text()
        );
        sidecar
    }

    /// Waits until `/startupz` answers 200: keys loaded and the listener up.
    pub fn wait_started(&self) {
        assert!(
            eventually(Duration::from_secs(10), || get(self.admin, "/startupz")
                .status
                == 200),
            "sidecar did not start; log:\n{}",
            self.log_text()
        );
    }

    pub fn spawn_at(
        identity: &str,
        addr: SocketAddr,
        keys: &Path,
        upstream: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = temp_dir("log").join("stderr.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args([
            "run",
            "--identity",
            identity,
            "--issuer",
            ISSUER,
            "--log-format",
            "json",
        ])
        .args(["--log-level", "info,portcullis=debug"])
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--upstream")
        .arg(upstream.to_string())
        .arg("--keys-dir")
        .arg(keys)
        .args(["--rescan-interval", "1"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        let child = cmd.spawn().expect("spawn portcullis");
        Self {
            child,
            addr,
            admin,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").text()
    }

    /// Sends SIGTERM by PID.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- raw HTTP/1.1 client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one request on a new connection; status 0 when the connection failed.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return Response {
            status: 0,
            headers: BTreeMap::new(),
            body: Vec::new(),
        };
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        raw.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    if stream.write_all(&bytes).is_err() {
        return Response {
            status: 0,
            headers: BTreeMap::new(),
            body: Vec::new(),
        };
    }
    read_response(&mut BufReader::new(stream))
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], b"")
}

pub fn get_with_token(addr: SocketAddr, target: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    request(addr, "GET", target, &[("authorization", &auth)], b"")
}

/// Reads one response (Content-Length bodies, or to EOF).
pub fn read_response(reader: &mut impl BufRead) -> Response {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).unwrap_or(0) == 0 {
        return Response {
            status: 0,
            headers: BTreeMap::new(),
            body: Vec::new(),
        };
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: BTreeMap<String, String> = read_headers(reader)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let mut body = Vec::new();
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        let _ = reader.read_exact(&mut body);
    } else if status != 101 && status != 204 && status != 304 {
        let _ = reader.read_to_end(&mut body);
    }
    Response {
        status,
        headers,
        body,
    }
}
