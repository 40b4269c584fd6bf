//! The inbound pipeline, end to end: the real binary in front of a recording upstream, real
//! HTTP over loopback. Every refusal asserts the status, the challenge and that the app saw
//! nothing.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::json;

fn setup(extra: &[&str]) -> (KeyDir, Upstream, Sidecar) {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, extra);
    sidecar.wait_started();
    (keys, upstream, sidecar)
}

#[test]
fn valid_token_reaches_the_app_with_verified_identity() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let token = good_token();
    let auth = format!("bearer {token}");
    let resp = request(
        sidecar.addr,
        "POST",
        "/todos/7?sort=desc&x=%20y",
        &[
            ("authorization", &auth),
            ("x-auth-subject", "admin"),
            ("X-Auth-Roles", "root"),
            ("x-custom", "kept"),
        ],
        b"{\"title\":\"milk\"}",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-app"), Some("yes"));

    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/todos/7?sort=desc&x=%20y");
    assert_eq!(seen.body, b"{\"title\":\"milk\"}");
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
    assert_eq!(seen.count("x-auth-subject"), 1, "spoofed copy must be gone");
    assert_eq!(seen.header("x-auth-roles"), Some("reader,writer"));
    assert_eq!(seen.header("x-auth-issuer"), Some(ISSUER));
    assert!(
        seen.header("authorization").is_none(),
        "the app must not receive the token by default"
    );

    let claims_b64 = seen.header("x-auth-claims").expect("claims header");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims_b64)
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], IDENTITY);
}

#[test]
fn forward_token_passes_authorization_on() {
    let (_keys, upstream, sidecar) = setup(&["--forward-token"]);
    let token = good_token();
    assert_eq!(get_with_token(sidecar.addr, "/", &token).status, 200);
    assert_eq!(
        upstream.last().header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}

#[test]
fn claim_to_header_map_from_the_config_file() {
    let dir = temp_dir("cfg");
    let cfg = dir.join("portcullis.yaml");
    std::fs::write(
        &cfg,
        "claim_headers:\n  email: x-user-email\n  tenant: x-tenant\n",
    )
    .expect("write");
    let (_keys, upstream, sidecar) = setup(&["--config", cfg.to_str().expect("path")]);
    let token = token_with(
        "k1",
        KEY1,
        json!({"email": "alice@example.com", "tenant": 42}),
    );
    let resp = request(
        sidecar.addr,
        "GET",
        "/",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-user-email", "mallory@example.com"),
        ],
        b"",
    );
    assert_eq!(resp.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.header("x-user-email"), Some("alice@example.com"));
    assert_eq!(seen.count("x-user-email"), 1);
    assert_eq!(seen.header("x-tenant"), Some("42"));
}

/// One refusal: status, the `error` in the challenge (None: no error attribute), description.
fn assert_refused(
    upstream: &Upstream,
    resp: &Response,
    status: u16,
    error: Option<&str>,
    desc: &str,
) {
    assert_eq!(resp.status, status, "body: {}", resp.text());
    let challenge = resp.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("Bearer realm=\"todos\""),
        "challenge: {challenge}"
    );
    match error {
        Some(e) => assert!(
            challenge.contains(&format!("error=\"{e}\"")),
            "challenge: {challenge}"
        ),
        None => assert!(!challenge.contains("error="), "challenge: {challenge}"),
    }
    let body = resp.json();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains(desc),
        "body {body} lacks {desc:?}"
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(
        upstream.requests().is_empty(),
        "the app must see nothing, saw {:?}",
        upstream.requests()
    );
}

#[test]
fn every_token_failure_is_refused_with_its_reason() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let t = now();
    let h = r#"{"alg":"HS256","kid":"k1"}"#;
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"iss": ISSUER, "aud": IDENTITY, "sub": "alice", "exp": t + 300});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.to_string()
    };
    let good = sign(h, &claims(json!({})), KEY1);
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(json!({"sub": "root"}))),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(json!({})))
    );
    let cases: Vec<(String, &str)> = vec![
        (
            sign(h, &claims(json!({"exp": t - 60})), KEY1),
            "token expired",
        ),
        (
            sign(h, &claims(json!({"aud": ["billing", "share"]})), KEY1),
            "wrong audience",
        ),
        (
            sign(h, &claims(json!({"iss": "https://evil"})), KEY1),
            "issuer not accepted",
        ),
        (sign(h, &claims(json!({"exp": null})), KEY1), "no exp claim"),
        (
            sign(h, &claims(json!({"exp": (t + 300).to_string()})), KEY1),
            "exp must be a number",
        ),
        (
            sign(h, &claims(json!({"nbf": t + 120})), KEY1),
            "not yet valid",
        ),
        (sign(h, &claims(json!({})), KEY2), "bad signature"),
        (tampered, "bad signature"),
        (
            sign(r#"{"alg":"HS256","kid":"nope"}"#, &claims(json!({})), KEY1),
            "unknown key id",
        ),
        (
            sign(r#"{"alg":"HS512","kid":"k1"}"#, &claims(json!({})), KEY1),
            "unsupported algorithm",
        ),
        (none, "token is unsigned"),
        (
            sign(
                r#"{"alg":"HS256","kid":"k1","crit":["x"]}"#,
                &claims(json!({})),
                KEY1,
            ),
            "critical",
        ),
        ("not-a-jwt".to_string(), "three dot-separated parts"),
        (format!("{}.{}", "a".repeat(9000), "b.c"), "too large"),
    ];
    for (token, desc) in cases {
        let resp = get_with_token(sidecar.addr, "/todos", &token);
        assert_refused(&upstream, &resp, 401, Some("invalid_token"), desc);
    }
    // The log names each reason but never the token.
    let log = sidecar.log_text();
    assert!(
        log.contains("\"reason\":\"expired\"") && log.contains("request denied"),
        "{log}"
    );
    assert!(
        !log.contains(parts[1]) && !log.contains(parts[2]),
        "a token leaked into the log"
    );
    // Decisions are counted when the request is logged, just after the response is sent.
    let counted = "portcullis_requests_total{decision=\"deny\",reason=\"bad_signature\"} 2";
    assert!(eventually(Duration::from_secs(2), || sidecar
        .metrics()
        .contains(counted)));
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains("portcullis_requests_total{decision=\"deny\",reason=\"expired\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_requests_total{decision=\"deny\",reason=\"bad_signature\"} 2"),
        "{metrics}"
    );
}

#[test]
fn missing_and_malformed_requests_get_rfc6750_answers() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let token = good_token();
    let bearer = format!("Bearer {token}");

    let resp = get(sidecar.addr, "/todos");
    assert_refused(&upstream, &resp, 401, None, "bearer token is required");
    let resp = request(
        sidecar.addr,
        "GET",
        "/todos",
        &[("authorization", "Basic YWxpY2U6cHc=")],
        b"",
    );
    assert_refused(&upstream, &resp, 401, None, "bearer token is required");
    let resp = request(
        sidecar.addr,
        "GET",
        "/todos",
        &[("authorization", &bearer), ("authorization", &bearer)],
        b"",
    );
    assert_refused(
        &upstream,
        &resp,
        400,
        Some("invalid_request"),
        "more than one",
    );
    let resp = request(
        sidecar.addr,
        "GET",
        "/todos",
        &[("authorization", "Bearer")],
        b"",
    );
    assert_refused(
        &upstream,
        &resp,
        400,
        Some("invalid_request"),
        "without a token",
    );
    let resp = get(sidecar.addr, &format!("/todos?access_token={token}"));
    assert_refused(
        &upstream,
        &resp,
        400,
        Some("invalid_request"),
        "query string",
    );
    let resp = request(
        sidecar.addr,
        "GET",
        "/todos?access_token=x",
        &[("authorization", &bearer)],
        b"",
    );
    assert_refused(
        &upstream,
        &resp,
        400,
        Some("invalid_request"),
        "more than one place",
    );
}

#[test]
fn oversized_head_gets_431() {
    let (_keys, upstream, sidecar) = setup(&["--max-header-bytes", "16384"]);
    let big = "x".repeat(20_000);
    let resp = request(
        sidecar.addr,
        "GET",
        "/",
        &[
            ("authorization", &format!("Bearer {}", good_token())),
            ("x-big", &big),
        ],
        b"",
    );
    assert_eq!(resp.status, 431, "{}", resp.text());
    assert!(upstream.requests().is_empty());
}

#[test]
fn public_paths_pass_without_a_token_but_are_still_stripped() {
    let (_keys, upstream, sidecar) = setup(&[
        "--public-path",
        "GET /healthz",
        "--public-path",
        "/static/*",
    ]);
    let resp = request(
        sidecar.addr,
        "GET",
        "/healthz",
        &[("x-auth-subject", "admin")],
        b"",
    );
    assert_eq!(resp.status, 200);
    assert!(
        upstream.last().header("x-auth-subject").is_none(),
        "spoofed header reached a public route"
    );
    assert_eq!(
        request(sidecar.addr, "POST", "/static/app.css", &[], b"x").status,
        200
    );
    upstream.clear();
    let resp = request(sidecar.addr, "POST", "/healthz", &[], b"");
    assert_refused(&upstream, &resp, 401, None, "bearer token is required");
}

#[test]
fn keep_alive_and_chunked_streaming_pass_through() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let token = good_token();
    let mut stream = TcpStream::connect(sidecar.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    for i in 0..3 {
        let req = format!(
            "POST /upload/{i} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).expect("write");
        let resp = read_response(&mut reader);
        assert_eq!(resp.status, 200, "request {i} on the same connection");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == b"hello world"));
}

#[test]
fn websocket_upgrade_is_proxied() {
    let (_keys, upstream, sidecar) = setup(&[]);
    let token = good_token();
    let mut stream = TcpStream::connect(sidecar.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = format!(
        "GET /ws HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).expect("write");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let resp = read_response(&mut reader);
    assert_eq!(resp.status, 101);
    stream.write_all(b"ping-frame").expect("write frame");
    let mut echoed = [0u8; 10];
    reader.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping-frame");
    assert_eq!(upstream.last().header("x-auth-subject"), Some("alice"));
}

#[test]
fn a_cached_token_is_refused_once_it_expires() {
    for cache in ["1024", "0"] {
        let (_keys, _upstream, sidecar) = setup(&["--leeway", "0", "--token-cache", cache]);
        let exp = now() + 2;
        let token = token_with("k1", KEY1, json!({ "exp": exp }));
        for _ in 0..3 {
            assert_eq!(get_with_token(sidecar.addr, "/", &token).status, 200);
        }
        while now() < exp {
            std::thread::sleep(Duration::from_millis(50));
        }
        let resp = get_with_token(sidecar.addr, "/", &token);
        assert_eq!(resp.status, 401, "--token-cache {cache}");
        assert_eq!(resp.json()["error_description"], "token expired");
    }
}

#[test]
fn dead_upstream_is_a_clear_502() {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let dead = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let sidecar = Sidecar::start(&keys.path, dead, &[]);
    sidecar.wait_started();
    let resp = get_with_token(sidecar.addr, "/", &good_token());
    assert_eq!(resp.status, 502);
    assert_eq!(resp.json()["error"], "bad_gateway");
    let ready = get(sidecar.admin, "/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("unreachable"), "{}", ready.text());
}

#[test]
fn curl_sees_the_same_answers() {
    let (_keys, _upstream, sidecar) = setup(&[]);
    let url = format!("http://{}/todos", sidecar.addr);
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", good_token()))
        .arg(&url)
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "-", &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"todos\""),
        "{text}"
    );
}

#[test]
fn rfc7515_appendix_a1_vector_verifies_then_fails_on_expiry() {
    // RFC 7515 A.1: an HS256 JWS whose key is given as a JWK; its exp (2011) has passed, so a
    // correct verifier passes the signature and refuses the token as expired.
    let jwks = r#"{"keys":[{"kty":"oct","kid":"rfc7515","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#;
    let keys = KeyDir::new(&[("jwks.json", jwks.as_bytes())]);
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &[]);
    sidecar.wait_started();
    let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let resp = get_with_token(sidecar.addr, "/", token);
    assert_refused(
        &upstream,
        &resp,
        401,
        Some("invalid_token"),
        "token expired",
    );
    // Change one signature character in the middle (the last one carries padding bits).
    let mut flipped = token.to_string();
    let at = flipped.len() - 10;
    let replacement = if &flipped[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    flipped.replace_range(at..at + 1, replacement);
    let resp = get_with_token(sidecar.addr, "/", &flipped);
    assert_refused(
        &upstream,
        &resp,
        401,
        Some("invalid_token"),
        "bad signature",
    );
}
