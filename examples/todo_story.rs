//! The todo story, end to end: three real portcullis sidecars (todos, reminder, share) with
//! real apps on loopback, mTLS between them with SPIFFE identities, authorization rules, and
//! an on-behalf-of call.
//!
//! - `reminder` may GET todos but not change them;
//! - `todos` may not call `reminder` at all;
//! - `share`, handling Bob's request, calls `todos` on Bob's behalf: the todos app sees
//!   `x-auth-subject: bob` and `x-auth-actor: share`;
//! - a client without a certificate is refused at the handshake.
//!
//! Run it (the sidecar binary must be built first):
//!
//! ```sh
//! cargo build --locked && cargo run --locked --example todo_story
//! ```
//!
//! `tests/story.rs` runs the same story and asserts every step.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::certs::{self, Issued};
use common::*;

/// One step of the story: what was tried, the answer expected and the answer seen.
pub struct Step {
    pub what: &'static str,
    pub expected: u16,
    pub status: u16,
    /// What the todos app saw for this step, if it saw anything.
    pub todos_saw: Option<Seen>,
}

/// A sidecar with its own certificate Secret and egress listener.
struct Service {
    sidecar: Sidecar,
    egress: SocketAddr,
    _secret: KeyDir,
}

fn policy(name: &str, rules: &str) -> String {
    format!("authorization:\n  name: {name}-policy\n  rules:\n{rules}")
}

fn start_service(
    name: &str,
    addr: SocketAddr,
    keys: &KeyDir,
    ca: &Issued,
    app: SocketAddr,
    routes: &str,
    rules: &str,
) -> Service {
    let cert = certs::leaf(
        ca,
        Some(&certs::spiffe(name)),
        &format!("{name}.default.svc"),
        false,
    );
    let secret = KeyDir::new(&[
        ("tls.crt", &cert.cert_pem()),
        ("tls.key", &cert.key_pem()),
        ("ca.crt", &ca.cert_pem()),
    ]);
    let egress: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let file = |n: &str| secret.path.join(n).display().to_string();
    let config = format!(
        "auth: [jwt+mtls, jwt]\n\
         tls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  client_auth: optional\n\
         egress:\n  listen: {egress}\n  routes:\n{routes}{rules}",
        file("tls.crt"),
        file("tls.key"),
        file("ca.crt"),
    );
    let path = temp_dir(name).join("portcullis.yaml");
    std::fs::write(&path, config).expect("config");
    // Users' tokens come from ISSUER (the test harness adds it); services' from their peers.
    let args = [
        "--config",
        path.to_str().expect("path"),
        "--issuer",
        "todos,reminder,share",
    ];
    let sidecar = Sidecar::start_at(name, addr, &keys.path, app, &args);
    let ready = eventually(Duration::from_secs(10), || {
        get(sidecar.admin, "/startupz").status == 200
    });
    assert!(
        ready,
        "{name} did not load its keys:\n{}",
        sidecar.log_text()
    );
    Service {
        sidecar,
        egress,
        _secret: secret,
    }
}

fn route(host: &str, addr: SocketAddr, ca_file: &str) -> String {
    format!(
        "  - host: {host}\n    upstream: {addr}\n    audience: {host}\n    \
         tls: {{server_name: {host}.default.svc, ca_file: {ca_file}}}\n"
    )
}

/// Runs the whole story and reports each step.
pub fn run_story() -> Vec<Step> {
    let keys = KeyDir::new(&[("k-2026-12", KEY1)]);
    let ca = certs::ca("cluster.local mesh CA");
    let ca_dir = temp_dir("ca");
    let ca_file = ca_dir.join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).expect("ca");
    let ca_file = ca_file.display().to_string();
    let spiffe = certs::spiffe;

    // The apps. share's app, on a request from a user, lists that user's todos through its
    // egress listener, passing on the context handle it was given.
    let todos_app = Upstream::start();
    let reminder_app = Upstream::start();
    let share_egress = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let share_app = {
        let egress = share_egress.clone();
        Upstream::start_with(Arc::new(move |seen: &Seen| {
            let handle = seen
                .header("x-portcullis-context")
                .unwrap_or("")
                .to_string();
            let Some(egress) = *egress.lock().expect("lock") else {
                return (503, "not ready".into());
            };
            let r = call_egress(
                egress,
                "GET",
                "todos",
                "/todos/bob",
                &[("x-portcullis-context", &handle)],
            );
            (r.status, r.text())
        }))
    };

    // Each sidecar's inbound address is chosen first, so that routes can name each other.
    let addr = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().expect("addr") };
    let (todos_addr, reminder_addr, share_addr) = (addr(), addr(), addr());
    let todos_rules = policy(
        "todos",
        &format!(
            "  - {{name: reminder-reads, action: allow, principals: [\"{}\"], methods: [GET, HEAD], paths: [/todos, /todos/*]}}\n\
             \x20 - {{name: share-for-users, action: allow, principals: [\"{}\"], paths: [/todos/*]}}\n",
            spiffe("reminder"),
            spiffe("share")
        ),
    );
    let reminder_rules = policy(
        "reminder",
        &format!(
            "  - {{name: no-calls-from-todos, action: deny, principals: [\"{}\"]}}\n",
            spiffe("todos")
        ),
    );
    let to_todos = route("todos", todos_addr, &ca_file);
    let to_reminder = route("reminder", reminder_addr, &ca_file);
    let todos = start_service(
        "todos",
        todos_addr,
        &keys,
        &ca,
        todos_app.addr,
        &to_reminder,
        &todos_rules,
    );
    let reminder = start_service(
        "reminder",
        reminder_addr,
        &keys,
        &ca,
        reminder_app.addr,
        &to_todos,
        &reminder_rules,
    );
    let share = start_service(
        "share",
        share_addr,
        &keys,
        &ca,
        share_app.addr,
        &to_todos,
        "",
    );
    *share_egress.lock().expect("lock") = Some(share.egress);

    let mut steps = Vec::new();
    let mut step = |what, expected, status, app: &Upstream| {
        let saw = app.requests().pop();
        app.clear();
        steps.push(Step {
            what,
            expected,
            status,
            todos_saw: saw,
        });
    };

    let r = call_egress(reminder.egress, "GET", "todos", "/todos/42", &[]);
    step(
        "reminder GETs /todos/42 through its egress",
        200,
        r.status,
        &todos_app,
    );
    let r = call_egress(reminder.egress, "POST", "todos", "/todos/42", &[]);
    step(
        "reminder POSTs /todos/42 (a change)",
        403,
        r.status,
        &todos_app,
    );
    let r = call_egress(todos.egress, "GET", "reminder", "/reminders", &[]);
    step("todos calls reminder", 403, r.status, &reminder_app);

    let bob = token_with(
        "k-2026-12",
        KEY1,
        serde_json::json!({"aud": "share", "sub": "bob", "roles": ["user"]}),
    );
    let status = curl_status(
        &ca_file,
        "share",
        share.sidecar.addr,
        "/shared-with-me",
        Some(&bob),
    );
    step(
        "Bob asks share; share calls todos on his behalf",
        200,
        status,
        &todos_app,
    );

    let status = curl_status(&ca_file, "todos", todos.sidecar.addr, "/todos", None);
    step(
        "an outside client with no certificate and no token calls todos",
        401,
        status,
        &todos_app,
    );

    if std::env::var_os("STORY_LOGS").is_some() {
        for (name, s) in [
            ("todos", &todos),
            ("reminder", &reminder),
            ("share", &share),
        ] {
            eprintln!("--- {name} log\n{}", s.sidecar.log_text());
        }
    }
    drop((reminder, todos, share));
    steps
}

/// An HTTPS request with curl (an independent client) to `<service>.default.svc` at `addr`,
/// trusting only the test CA; returns the status (0 when the connection failed).
fn curl_status(
    ca_file: &str,
    service: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> u16 {
    let host = format!("{service}.default.svc");
    let mut curl = std::process::Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        ca_file,
    ])
    .args(["--resolve", &format!("{host}:{}:127.0.0.1", addr.port())]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = curl
        .arg(format!("https://{host}:{}{path}", addr.port()))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[allow(dead_code)]
fn main() {
    let steps = run_story();
    let mut failed = 0;
    for s in &steps {
        let ok = s.status == s.expected;
        failed += usize::from(!ok);
        println!(
            "{} {:>3} (expected {}) {}",
            if ok { "ok  " } else { "FAIL" },
            s.status,
            s.expected,
            s.what
        );
        if let Some(seen) = &s.todos_saw {
            for h in ["x-auth-subject", "x-auth-actor", "x-auth-peer"] {
                if let Some(v) = seen.header(h) {
                    println!("         app saw {h}: {v}");
                }
            }
        }
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
