//! The outbound listener: tokens minted per route, on-behalf-of calls through a context
//! handle (RFC 8693 `act`), refusals for unknown targets and bad handles, mTLS to the target.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::certs;
use common::*;
use serde_json::json;

fn call(egress: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    call_egress(egress, "GET", host, path, headers)
}

fn claims_seen(seen: &Seen) -> serde_json::Value {
    let b64 = seen.header("x-auth-claims").expect("claims header");
    serde_json::from_slice(&B64.decode(b64).expect("b64")).expect("json")
}

/// todos (TLS, accepts tokens from the user issuer and from `share`) and share (egress on).
struct Pair {
    _keys: KeyDir,
    _secrets: (KeyDir, KeyDir),
    todos_app: Upstream,
    share_app: Upstream,
    todos: Sidecar,
    share: Sidecar,
    egress: SocketAddr,
}

fn pair() -> Pair {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let ca = certs::ca("mesh CA");
    let todos_cert = certs::leaf(
        &ca,
        Some(&certs::spiffe("todos")),
        "todos.default.svc",
        false,
    );
    let share_cert = certs::leaf(
        &ca,
        Some(&certs::spiffe("share")),
        "share.default.svc",
        false,
    );
    let secret = |c: &certs::Issued| {
        KeyDir::new(&[
            ("tls.crt", &c.cert_pem()),
            ("tls.key", &c.key_pem()),
            ("ca.crt", &ca.cert_pem()),
        ])
    };
    let (todos_secret, share_secret) = (secret(&todos_cert), secret(&share_cert));
    let f = |d: &KeyDir, n: &str| d.path.join(n).display().to_string();

    let todos_app = Upstream::start();
    let todos_args = [
        "--issuer",
        "share",
        "--tls-cert",
        &f(&todos_secret, "tls.crt"),
        "--tls-key",
        &f(&todos_secret, "tls.key"),
        "--tls-client-ca",
        &f(&todos_secret, "ca.crt"),
        "--tls-client-auth",
        "required",
    ];
    let todos = Sidecar::start_as("todos", &keys.path, todos_app.addr, &todos_args);

    // share's app answers after calling todos through its egress listener with the handle.
    let egress: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let share_app = Upstream::start_with(Arc::new(move |seen: &Seen| {
        let handle = seen
            .header("x-portcullis-context")
            .unwrap_or("")
            .to_string();
        let resp = call(
            egress,
            "todos",
            "/todos/bob",
            &[("x-portcullis-context", &handle)],
        );
        (resp.status, resp.text())
    }));
    let config = temp_dir("share").join("share.yaml");
    std::fs::write(
        &config,
        format!(
            "egress:\n  listen: {egress}\n  token_ttl: 30\n  routes:\n\
             \x20 - host: todos\n    upstream: {}\n    audience: todos\n\
             \x20   tls: {{server_name: todos.default.svc, ca_file: {}}}\n\
             \x20 - path_prefix: /plain/\n    strip_prefix: true\n\
             \x20   upstream: 127.0.0.1:9\n    audience: nobody\n",
            todos.addr,
            f(&share_secret, "ca.crt")
        ),
    )
    .expect("config");
    let share_args = [
        "--config",
        config.to_str().expect("path"),
        "--tls-cert",
        &f(&share_secret, "tls.crt"),
        "--tls-key",
        &f(&share_secret, "tls.key"),
    ];
    let share = Sidecar::start_as("share", &keys.path, share_app.addr, &share_args);
    for s in [&todos, &share] {
        s.wait_started();
    }
    Pair {
        _keys: keys,
        _secrets: (todos_secret, share_secret),
        todos_app,
        share_app,
        todos,
        share,
        egress,
    }
}

fn share_get(p: &Pair, token: &str) -> Response {
    // share serves TLS without client auth; reach it with openssl through curl for realism.
    let port = p.share.addr.port();
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .arg(format!("https://127.0.0.1:{port}/share/list"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Response {
        status: code.parse().unwrap_or(0),
        headers: Default::default(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn share_calls_todos_on_behalf_of_bob() {
    let p = pair();
    let bob = token_with(
        "k1",
        KEY1,
        json!({"aud": "share", "sub": "bob", "roles": ["user"]}),
    );
    let resp = share_get(&p, &bob);
    assert_eq!(resp.status, 200, "{}", resp.text());

    let seen = p.todos_app.last();
    assert_eq!(seen.header("x-auth-subject"), Some("bob"));
    assert_eq!(seen.header("x-auth-actor"), Some("share"));
    assert_eq!(seen.header("x-auth-roles"), Some("user"));
    assert_eq!(
        seen.header("x-auth-peer"),
        Some(certs::spiffe("share").as_str()),
        "mTLS with share's own certificate"
    );
    let claims = claims_seen(&seen);
    assert_eq!(claims["iss"], "share");
    assert_eq!(claims["aud"], "todos");
    assert_eq!(claims["act"], json!({"sub": "share"}));
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        30
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert!(p.share_app.last().header("x-portcullis-context").is_some());
}

#[test]
fn without_a_handle_the_token_is_the_services_own() {
    let p = pair();
    let resp = call(
        p.egress,
        "todos:15001",
        "/todos",
        &[("authorization", "Bearer forged.by.app")],
    );
    assert_eq!(
        resp.status,
        200,
        "{}\n{}\n{}",
        resp.text(),
        p.share.log_text(),
        p.todos.log_text()
    );
    let seen = p.todos_app.last();
    assert_eq!(seen.header("x-auth-subject"), Some("share"));
    assert!(seen.header("x-auth-actor").is_none());
}

#[test]
fn bad_handles_and_unknown_targets_are_refused() {
    let p = pair();
    let resp = call(
        p.egress,
        "todos",
        "/todos",
        &[("x-portcullis-context", "made-up-handle")],
    );
    assert_eq!(resp.status, 400);
    assert!(
        resp.text().contains("unknown context handle"),
        "{}",
        resp.text()
    );

    let resp = call(p.egress, "billing", "/invoices", &[]);
    assert_eq!(resp.status, 502);
    assert!(
        resp.text()
            .contains("no egress route for host \\\"billing\\\""),
        "{}",
        resp.text()
    );
    assert!(p.todos_app.requests().is_empty(), "nothing may be sent on");

    // A handle outlives its request only by the grace period (5 s by default).
    let seen_handle: Arc<Mutex<Option<String>>> = Arc::default();
    let bob = token_with("k1", KEY1, json!({"aud": "share", "sub": "bob"}));
    let _ = share_get(&p, &bob);
    *seen_handle.lock().expect("lock") = p
        .share_app
        .last()
        .header("x-portcullis-context")
        .map(str::to_string);
    let handle = seen_handle.lock().expect("lock").clone().expect("handle");
    let soon = call(
        p.egress,
        "todos",
        "/todos",
        &[("x-portcullis-context", &handle)],
    );
    assert_eq!(soon.status, 200, "within the grace period");
    std::thread::sleep(Duration::from_millis(5300));
    let late = call(
        p.egress,
        "todos",
        "/todos",
        &[("x-portcullis-context", &handle)],
    );
    assert_eq!(late.status, 400);
    assert!(
        late.text().contains("expired context handle"),
        "{}",
        late.text()
    );
}
