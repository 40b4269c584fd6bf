//! The plain-HTTP/1.1 forwarder (`src/forward/`), end to end: the real binary over loopback,
//! raw sockets on the client side, and either the recording upstream or a scripted one that
//! answers with canned bytes. Each test asserts the status, the headers and what the app saw.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------- set-up

fn setup(extra: &[&str]) -> (KeyDir, Upstream, Sidecar) {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, extra);
    sidecar.wait_started();
    (keys, upstream, sidecar)
}

fn setup_scripted(response: &[u8], close_after: bool) -> (KeyDir, Scripted, Sidecar) {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Scripted::start(response, close_after);
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &[]);
    sidecar.wait_started();
    (keys, upstream, sidecar)
}

fn auth() -> String {
    format!("authorization: Bearer {}\r\n", good_token())
}

// ---------------------------------------------------------------- a scripted upstream

/// One request as a scripted upstream received it: the raw head and the body.
#[derive(Debug, Clone)]
struct RawSeen {
    head: String,
    body: Vec<u8>,
}

impl RawSeen {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// An app that answers every request with the same canned bytes and, if told so, closes the
/// connection after each answer (without saying so).
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawSeen>>>,
}

impl Scripted {
    fn start(response: &[u8], close_after: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let response = response.to_vec();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (record, response) = (record.clone(), response.clone());
                thread::spawn(move || scripted_conn(stream, record, response, close_after));
            }
        });
        Self { addr, seen }
    }

    fn requests(&self) -> Vec<RawSeen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn scripted_conn(
    stream: TcpStream,
    record: Arc<Mutex<Vec<RawSeen>>>,
    response: Vec<u8>,
    close_after: bool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let mut seen = RawSeen {
            head,
            body: Vec::new(),
        };
        let len: usize = seen
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        seen.body.resize(len, 0);
        if reader.read_exact(&mut seen.body).is_err() {
            return;
        }
        if let Ok(mut r) = record.lock() {
            r.push(seen);
        }
        if writer.write_all(&response).is_err() {
            return;
        }
        if close_after {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

// ---------------------------------------------------------------- a raw client

/// A response head as the client received it.
#[derive(Debug)]
struct Head {
    status: u16,
    status_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

/// Sends `raw` on a new connection and reads one response (Content-Length or to EOF).
fn send_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    let (mut stream, mut reader) = connect(addr);
    stream.write_all(raw).expect("write");
    read_response(&mut reader)
}

/// Reads a status line and headers; status 0 when nothing came.
fn read_head(reader: &mut impl BufRead) -> Head {
    let mut status_line = String::new();
    let _ = reader.read_line(&mut status_line);
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("header line with a colon");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Head {
        status,
        status_line: status_line.trim_end().to_string(),
        headers,
    }
}

/// Decodes one chunked body strictly (sizes, CRLFs, trailer section).
fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).expect("chunk size line");
        assert!(size.ends_with("\r\n"), "chunk size line {size:?}");
        let digits = size.trim_end().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(digits, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
        if n == 0 {
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("trailer line");
                if line == "\r\n" {
                    return body;
                }
                assert!(!line.is_empty(), "chunked body ended without its last CRLF");
            }
        }
        let mut chunk = vec![0u8; n + 2];
        reader.read_exact(&mut chunk).expect("chunk data");
        assert_eq!(&chunk[n..], b"\r\n", "chunk data must end with CRLF");
        body.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the peer closes; `Err` when it did not close within the read timeout.
fn read_to_close(reader: &mut impl Read) -> Result<Vec<u8>, std::io::Error> {
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).map(|_| rest)
}

/// Whether the server closed the connection (EOF or reset) without sending anything more.
fn closed_without_more(reader: &mut impl Read) -> bool {
    match read_to_close(reader) {
        Ok(rest) => rest.is_empty(),
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

/// Gives the sidecar a moment to (wrongly) pass something on before asserting the app saw nothing.
fn settle() {
    thread::sleep(Duration::from_millis(200));
}

// ---------------------------------------------------------------- 1, 2, 13: framing refusals

#[test]
fn content_length_with_chunked_is_refused() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let raw = format!(
        "POST /cl-te HTTP/1.1\r\nhost: x\r\n{}content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
         0\r\n\r\n",
        auth()
    );
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(resp.json()["error"], "bad_request", "{}", resp.text());
    settle();
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

#[test]
fn unknown_coding_differing_lengths_and_bad_host_are_refused() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let a = auth();
    let cases = [
        (
            501,
            format!("POST /gzip HTTP/1.1\r\nhost: x\r\n{a}transfer-encoding: gzip\r\n\r\nhello"),
        ),
        (
            400,
            format!(
                "POST /two-cl HTTP/1.1\r\nhost: x\r\n{a}content-length: 5\r\ncontent-length: 6\r\n\r\nhello!"
            ),
        ),
        (400, format!("GET /no-host HTTP/1.1\r\n{a}\r\n")),
        (
            400,
            format!("GET /two-hosts HTTP/1.1\r\nhost: a\r\nhost: b\r\n{a}\r\n"),
        ),
    ];
    for (status, raw) in &cases {
        let resp = send_raw(sidecar.addr, raw.as_bytes());
        let first = raw.lines().next().unwrap_or("");
        assert_eq!(resp.status, *status, "{first}: {}", resp.text());
        let error = if *status == 501 {
            "not_implemented"
        } else {
            "bad_request"
        };
        assert_eq!(resp.json()["error"], error, "{first}: {}", resp.text());
        assert_eq!(resp.header("connection"), Some("close"), "{first}");
    }
    settle();
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());

    // The same requests, made valid, do reach the app: the refusals above are about framing.
    let resp = send_raw(
        sidecar.addr,
        format!("GET /one-host HTTP/1.1\r\nhost: a\r\n{a}connection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(upstream.last().target, "/one-host");
}

#[test]
fn space_before_the_colon_is_refused() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let raw = format!(
        "POST /space HTTP/1.1\r\nhost: x\r\n{}transfer-encoding : chunked\r\ncontent-length: 3\r\n\r\n\
         abc",
        auth()
    );
    let resp = send_raw(sidecar.addr, raw.as_bytes());
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.header("connection"), Some("close"));
    settle();
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

// ---------------------------------------------------------------- 3: chunked request bodies

#[test]
fn chunked_request_is_decoded_and_reencoded() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let raw = format!(
        "POST /chunked HTTP/1.1\r\nhost: x\r\n{}transfer-encoding: chunked\r\nx-kept: 1\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
        auth()
    );
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-app"), Some("yes"));
    assert_eq!(resp.text(), "app saw POST /chunked");

    let seen = upstream.last();
    assert_eq!(seen.target, "/chunked");
    assert_eq!(seen.body, b"hello world");
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.count("transfer-encoding"), 1);
    assert_eq!(seen.header("content-length"), None);
    assert_eq!(seen.header("x-trailer"), None, "trailers are not passed on");
    assert_eq!(seen.header("x-kept"), Some("1"));
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn malformed_chunked_request_is_refused() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let a = auth();
    let bodies: [(&str, &[u8]); 3] = [
        ("/bad-size", b"zz\r\n"),
        ("/bad-after-prefix", b"5\r\nhello\r\nzz\r\n"),
        ("/bad-data-crlf", b"5\r\nhelloXY0\r\n\r\n"),
    ];
    for (target, body) in bodies {
        let mut raw =
            format!("POST {target} HTTP/1.1\r\nhost: x\r\n{a}transfer-encoding: chunked\r\n\r\n")
                .into_bytes();
        raw.extend_from_slice(body);
        let (mut stream, mut reader) = connect(sidecar.addr);
        stream.write_all(&raw).expect("write");
        let resp = read_response(&mut reader);
        assert_eq!(resp.status, 400, "{target}: {}", resp.text());
        assert_eq!(resp.json()["error"], "bad_request", "{target}");
        assert!(
            closed_without_more(&mut reader),
            "{target}: the connection must end"
        );
    }
    settle();
    for seen in upstream.requests() {
        assert!(
            seen.body.is_empty() || seen.body == b"hello",
            "the app got a complete request with a body beyond the valid prefix: {seen:?}"
        );
    }
}

// ---------------------------------------------------------------- 4: pipelining

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let a = auth();
    let raw = format!(
        "GET /first HTTP/1.1\r\nhost: x\r\n{a}\r\n\
         POST /second HTTP/1.1\r\nhost: x\r\n{a}content-length: 3\r\n\r\nabc\
         GET /third HTTP/1.1\r\nhost: x\r\n{a}connection: close\r\n\r\n"
    );
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    for expected in [
        "app saw GET /first",
        "app saw POST /second",
        "app saw GET /third",
    ] {
        let resp = read_response(&mut reader);
        assert_eq!(resp.status, 200, "{expected}: {}", resp.text());
        assert_eq!(resp.text(), expected);
    }
    assert!(
        closed_without_more(&mut reader),
        "connection: close ends it"
    );
    let seen = upstream.requests();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/first", "/second", "/third"]);
    assert_eq!(seen[1].body, b"abc");
    assert!(seen[0].body.is_empty());
}

// ---------------------------------------------------------------- 5, 6: HTTP/1.0 and re-framing

#[test]
fn http10_client_gets_close_after_the_response() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let raw = format!("GET /old HTTP/1.0\r\n{}\r\n", auth());
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    let head = read_head(&mut reader);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("connection"), Some("close"), "{head:?}");
    assert_eq!(head.header("content-length"), Some("16"), "{head:?}");
    let start = Instant::now();
    let rest = read_to_close(&mut reader).expect("the sidecar closes the connection");
    assert_eq!(rest, b"app saw GET /old");
    assert!(start.elapsed() < Duration::from_secs(3));
    let seen = upstream.last();
    assert_eq!(seen.target, "/old");
    assert!(
        seen.header("host").is_some(),
        "the app's request has a Host"
    );

    // With `connection: keep-alive` the connection stays open for a second request.
    let raw = format!(
        "GET /old-ka HTTP/1.0\r\n{}connection: keep-alive\r\n\r\n",
        auth()
    );
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    stream.write_all(raw.as_bytes()).expect("write again");
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "app saw GET /old-ka");
}

#[test]
fn chunked_response_is_unframed_for_http10_and_rechunked_for_http11() {
    let (_keys, upstream, sidecar) = setup_scripted(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-app: scripted\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    );
    // HTTP/1.0: the plain body, ended by the close.
    let raw = format!("GET /ten HTTP/1.0\r\n{}\r\n", auth());
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    let head = read_head(&mut reader);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
    assert_eq!(head.header("x-app"), Some("scripted"));
    assert_eq!(head.header("connection"), Some("close"), "{head:?}");
    let body = read_to_close(&mut reader).expect("the sidecar closes the connection");
    assert_eq!(String::from_utf8_lossy(&body), "hello");

    // HTTP/1.1: chunked, decoding to the same body, and the connection stays usable.
    let (mut stream, mut reader) = connect(sidecar.addr);
    let raw = format!("GET /eleven HTTP/1.1\r\nhost: x\r\n{}\r\n", auth());
    for _ in 0..2 {
        stream.write_all(raw.as_bytes()).expect("write");
        let head = read_head(&mut reader);
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(
            head.header("transfer-encoding"),
            Some("chunked"),
            "{head:?}"
        );
        assert_eq!(head.header("content-length"), None, "{head:?}");
        assert_eq!(read_chunked(&mut reader), b"hello");
    }

    let seen = upstream.requests();
    let lines: Vec<&str> = seen.iter().map(RawSeen::request_line).collect();
    assert_eq!(
        lines,
        [
            "GET /ten HTTP/1.1",
            "GET /eleven HTTP/1.1",
            "GET /eleven HTTP/1.1"
        ]
    );
    assert!(seen[0].header("host").is_some(), "Host added for the app");
}

#[test]
fn close_delimited_response_is_rechunked_and_the_client_keeps_its_connection() {
    let (_keys, upstream, sidecar) = setup_scripted(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody-until-close",
        true,
    );
    let (mut stream, mut reader) = connect(sidecar.addr);
    for i in 0..2 {
        let raw = format!("GET /until-close/{i} HTTP/1.1\r\nhost: x\r\n{}\r\n", auth());
        stream.write_all(raw.as_bytes()).expect("write");
        let head = read_head(&mut reader);
        assert_eq!(head.status, 200, "request {i}: {head:?}");
        assert_eq!(
            head.header("transfer-encoding"),
            Some("chunked"),
            "{head:?}"
        );
        assert_eq!(head.header("connection"), None, "{head:?}");
        assert_eq!(
            read_chunked(&mut reader),
            b"body-until-close",
            "request {i}"
        );
    }
    let seen = upstream.requests();
    let lines: Vec<&str> = seen.iter().map(RawSeen::request_line).collect();
    assert_eq!(
        lines,
        ["GET /until-close/0 HTTP/1.1", "GET /until-close/1 HTTP/1.1"]
    );
}

// ---------------------------------------------------------------- 7: stale pooled connections

#[test]
fn an_app_that_closes_silently_does_not_cause_errors() {
    let (_keys, upstream, sidecar) =
        setup_scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true);
    let token = good_token();
    for i in 0..5 {
        let resp = get_with_token(sidecar.addr, &format!("/silent/{i}"), &token);
        assert_eq!(resp.status, 200, "GET {i}: {}", resp.text());
        assert_eq!(resp.text(), "ok");
        thread::sleep(Duration::from_millis(100));
    }
    // A request with a body cannot simply be sent again: the pool must not hand out the dead
    // connection in the first place.
    let auth = format!("Bearer {token}");
    for i in 0..5 {
        let resp = request(
            sidecar.addr,
            "POST",
            &format!("/silent-post/{i}"),
            &[("authorization", &auth)],
            b"payload",
        );
        assert_eq!(resp.status, 200, "POST {i}: {}", resp.text());
        thread::sleep(Duration::from_millis(100));
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert!(seen[5..].iter().all(|s| s.body == b"payload"));
}

// ---------------------------------------------------------------- 8, 9: curl

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl")
}

#[test]
fn head_with_curl() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let out = curl(&[
        "-I",
        "-H",
        &format!("authorization: Bearer {}", good_token()),
        &format!("http://{}/x", sidecar.addr),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_ascii_lowercase().contains("x-app: yes"), "{text}");
    let seen = upstream.last();
    assert_eq!(seen.method, "HEAD");
    assert_eq!(seen.target, "/x");
}

#[test]
fn head_then_get_on_one_connection() {
    // The recording app (wrongly) sends a body with its HEAD answer; the body is no part of the
    // HEAD response and must not be taken for the next response either.
    let (_keys, upstream, sidecar) = setup(&[]);
    let a = auth();
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream
        .write_all(format!("HEAD /h HTTP/1.1\r\nhost: x\r\n{a}\r\n").as_bytes())
        .expect("write");
    let head = read_head(&mut reader);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("15"), "{head:?}");
    stream
        .write_all(format!("GET /g HTTP/1.1\r\nhost: x\r\n{a}\r\n").as_bytes())
        .expect("write");
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "app saw GET /g");
    let targets: Vec<String> = upstream.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/h", "/g"]);
}

#[test]
fn expect_100_continue_with_curl_and_raw() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let token = good_token();
    let dir = temp_dir("http1-upload");
    let file = dir.join("upload.bin");
    let data: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write upload file");
    let out = curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Expect: 100-continue",
        "-H",
        &format!("authorization: Bearer {token}"),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{}/upload", sidecar.addr),
        "-w",
        "%{http_code}",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let seen = upstream.last();
    assert_eq!(seen.target, "/upload");
    assert_eq!(seen.body.len(), data.len());
    assert!(seen.body == data, "the app got different bytes");
    assert_eq!(
        seen.header("expect"),
        None,
        "the sidecar answered the expectation"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Raw: the 100 comes before any body byte is sent.
    let (mut stream, mut reader) = connect(sidecar.addr);
    let raw = format!(
        "PUT /raw-upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         expect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    );
    stream.write_all(raw.as_bytes()).expect("write head");
    let interim = read_head(&mut reader);
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(interim.status_line.starts_with("HTTP/1.1 100"));
    stream.write_all(b"hello").expect("write body");
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(upstream.last().body, b"hello");
    assert_eq!(upstream.last().target, "/raw-upload");

    // Without a token there is no 100: the refusal comes first.
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream
        .write_all(
            b"PUT /no-token HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
        )
        .expect("write head");
    let head = read_head(&mut reader);
    assert_eq!(head.status, 401, "{head:?}");
    assert_eq!(upstream.last().target, "/raw-upload");

    // curl --http1.0
    let out = curl(&[
        "--http1.0",
        "-o",
        "/dev/null",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-w",
        "%{http_code}",
        &format!("http://{}/ten", sidecar.addr),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(upstream.last().target, "/ten");
}

// ---------------------------------------------------------------- 10: hop-by-hop headers

#[test]
fn hop_by_hop_headers_are_not_passed_on() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let raw = format!(
        "GET /hop HTTP/1.1\r\nhost: x\r\n{}connection: keep-alive, x-secret\r\nx-secret: 1\r\n\
         keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nte: trailers\r\nx-kept: yes\r\n\r\n",
        auth()
    );
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = upstream.last();
    assert_eq!(seen.target, "/hop");
    for name in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert_eq!(
            seen.count(name),
            0,
            "{name} reached the app: {:?}",
            seen.headers
        );
    }
    assert!(
        seen.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .all(|(_, v)| !v.to_ascii_lowercase().contains("x-secret")),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-kept"), Some("yes"));
    // `keep-alive` kept the client connection open.
    stream
        .write_all(format!("GET /hop2 HTTP/1.1\r\nhost: x\r\n{}\r\n", auth()).as_bytes())
        .expect("write");
    assert_eq!(read_response(&mut reader).status, 200);
}

// ---------------------------------------------------------------- 11: large heads

#[test]
fn too_many_headers_get_431() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let mut raw = format!("GET /many HTTP/1.1\r\nhost: x\r\n{}", auth());
    for i in 0..200 {
        raw.push_str(&format!("x-h{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let resp = send_raw(sidecar.addr, raw.as_bytes());
    assert_eq!(resp.status, 431, "{}", resp.text());
    settle();
    assert!(upstream.requests().is_empty());
}

#[test]
fn head_over_max_header_bytes_gets_431() {
    let (_keys, upstream, sidecar) =
        setup(&["--max-header-bytes", "8192", "--max-token-bytes", "1024"]);
    let token = good_token();
    assert_eq!(get_with_token(sidecar.addr, "/small", &token).status, 200);
    let big = "x".repeat(9000);
    let resp = request(
        sidecar.addr,
        "GET",
        "/big",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-big", &big),
        ],
        b"",
    );
    assert_eq!(resp.status, 431, "{}", resp.text());
    settle();
    let targets: Vec<String> = upstream.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/small"]);
}

// ---------------------------------------------------------------- 12: a large body

#[test]
fn a_one_mebibyte_body_arrives_intact() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 253) as u8)
        .collect();
    let auth = format!("Bearer {}", good_token());
    let resp = request(
        sidecar.addr,
        "POST",
        "/big-body",
        &[("authorization", &auth)],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "app saw POST /big-body");
    let seen = upstream.last();
    assert_eq!(seen.header("content-length"), Some("1048576"));
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "the app got different bytes");
}

// ---------------------------------------------------------------- 14: 204

#[test]
fn no_content_then_another_request() {
    let (_keys, upstream, sidecar) = setup_scripted(b"HTTP/1.1 204 No Content\r\n\r\n", false);
    let (mut stream, mut reader) = connect(sidecar.addr);
    for i in 0..2 {
        let raw = format!("DELETE /item/{i} HTTP/1.1\r\nhost: x\r\n{}\r\n", auth());
        stream.write_all(raw.as_bytes()).expect("write");
        let head = read_head(&mut reader);
        assert_eq!(head.status, 204, "request {i}: {head:?}");
        assert_eq!(head.header("content-length"), None, "{head:?}");
        assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
        assert_eq!(head.header("connection"), None, "{head:?}");
    }
    let seen = upstream.requests();
    let lines: Vec<&str> = seen.iter().map(RawSeen::request_line).collect();
    assert_eq!(
        lines,
        ["DELETE /item/0 HTTP/1.1", "DELETE /item/1 HTTP/1.1"]
    );
}

// ---------------------------------------------------------------- upgrades

#[test]
fn bytes_the_app_sends_right_after_101_reach_the_client() {
    // A server-speaks-first protocol: the app's first bytes come in the same segment as its 101.
    let (_keys, upstream, sidecar) = setup_scripted(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nhello-from-app",
        false,
    );
    let raw = format!(
        "GET /ws HTTP/1.1\r\nhost: x\r\n{}connection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        auth()
    );
    let (mut stream, mut reader) = connect(sidecar.addr);
    stream.write_all(raw.as_bytes()).expect("write");
    let head = read_head(&mut reader);
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("upgrade"), Some("websocket"), "{head:?}");
    let mut greeting = [0u8; 14];
    reader
        .read_exact(&mut greeting)
        .expect("the app's first bytes");
    assert_eq!(&greeting, b"hello-from-app");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].request_line(), "GET /ws HTTP/1.1");
    assert_eq!(seen[0].header("upgrade").as_deref(), Some("websocket"));
}
