//! The command line: configuration errors that name the field, `token mint` checked by an
//! independent HMAC, `token inspect` verdicts, `check`, and the demo answering curl.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("PORTCULLIS_IDENTITY")
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_identity_fails_with_the_flag_and_the_fix() {
    let (code, _, err) = portcullis(&["run", "--issuer", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--identity") && err.contains("fix:"), "{err}");
}

#[test]
fn unknown_yaml_field_is_named() {
    let dir = temp_dir("cli");
    let cfg = dir.join("bad.yaml");
    std::fs::write(
        &cfg,
        "identity: todos\nissuers: [a]\nlisten_addr: 1.2.3.4:1\n",
    )
    .expect("write");
    let (code, _, err) = portcullis(&["run", "--config", cfg.to_str().expect("path")]);
    assert_eq!(code, 2);
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn environment_variables_configure_the_sidecar() {
    let out = Command::new(bin())
        .args(["check"])
        .env("PORTCULLIS_IDENTITY", "todos")
        .env("PORTCULLIS_ISSUER", "a,b")
        .env("PORTCULLIS_KEYS_DIR", "/nonexistent/keys")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("/nonexistent/keys"), "{err}");
}

#[test]
fn check_accepts_a_good_setup_and_names_a_short_key() {
    let keys = KeyDir::new(&[("k1", KEY1), ("k2", KEY2)]);
    let path = keys.path.to_str().expect("path");
    let (code, out, err) = portcullis(&[
        "check",
        "--identity",
        "todos",
        "--issuer",
        ISSUER,
        "--keys-dir",
        path,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("keys: 2") && out.contains("signing kid \"k2\""),
        "{out}"
    );

    let weak = KeyDir::new(&[("k1", KEY1), ("short", b"tiny")]);
    let path = weak.path.to_str().expect("path");
    let (code, _, err) = portcullis(&[
        "check",
        "--identity",
        "todos",
        "--issuer",
        ISSUER,
        "--keys-dir",
        path,
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("short") && err.contains("at least 32 bytes"),
        "{err}"
    );
}

#[test]
fn minted_tokens_verify_under_an_independent_hmac() {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let path = keys.path.to_str().expect("path");
    let (code, out, err) = portcullis(&[
        "token",
        "mint",
        "--keys-dir",
        path,
        "--issuer",
        ISSUER,
        "--audience",
        "todos",
        "--subject",
        "bob",
        "--ttl",
        "120",
        "--roles",
        "admin,reader",
        "--claim",
        "email=bob@example.com",
        "--claim",
        "level=3",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    let mut mac = Hmac::<Sha256>::new_from_slice(KEY1).expect("hmac");
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    mac.verify_slice(&B64.decode(parts[2]).expect("sig"))
        .expect("signature must verify independently");

    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["kid"], "k1");
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).expect("b64")).expect("json");
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], "todos");
    assert_eq!(claims["roles"], serde_json::json!(["admin", "reader"]));
    assert_eq!(claims["email"], "bob@example.com");
    assert_eq!(claims["level"], 3);
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(exp >= now() + 110 && exp <= now() + 130);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
}

#[test]
fn inspect_explains_the_verdict() {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let path = keys.path.to_str().expect("path");
    let billing = token_with("k1", KEY1, serde_json::json!({"aud": "billing"}));
    let (code, out, _) = portcullis(&[
        "token",
        "inspect",
        &billing,
        "--keys-dir",
        path,
        "--identity",
        "todos",
        "--issuer",
        ISSUER,
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("\"aud\": \"billing\"") && out.contains("verdict: rejected: wrong audience"),
        "{out}"
    );

    let good = good_token();
    let (code, out, _) = portcullis(&[
        "token",
        "inspect",
        &good,
        "--keys-dir",
        path,
        "--identity",
        "todos",
        "--issuer",
        ISSUER,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("verdict: accepted"), "{out}");

    let (code, out, _) = portcullis(&["token", "inspect", &good]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"sub\": \"alice\"") && out.contains("not checked"),
        "{out}"
    );
}

#[test]
fn demo_prints_working_curl_lines() {
    let (listen, admin, echo) = (free_port(), free_port(), free_port());
    let mut child = Command::new(bin())
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--upstream", &format!("127.0.0.1:{echo}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut accepted = None;
    let mut expired = None;
    let mut previous = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line.contains("Bearer ") {
            let token = line
                .split("Bearer ")
                .nth(1)
                .unwrap_or("")
                .trim_end_matches('\'')
                .to_string();
            if previous.starts_with("Accepted") {
                accepted = Some(token);
            } else if previous.starts_with("Expired") {
                expired = Some(token);
            }
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
        previous = line;
    }
    let addr = format!("127.0.0.1:{listen}").parse().expect("addr");
    let admin_addr = format!("127.0.0.1:{admin}").parse().expect("addr");
    assert!(eventually(Duration::from_secs(10), || get(
        admin_addr, "/readyz"
    )
    .status
        == 200));
    let resp = get_with_token(addr, "/todos", &accepted.expect("accepted token printed"));
    assert_eq!(resp.status, 200);
    assert!(
        resp.text().contains("\"x-auth-subject\": \"alice\""),
        "{}",
        resp.text()
    );
    let resp = get_with_token(addr, "/todos", &expired.expect("expired token printed"));
    assert_eq!(resp.status, 401);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn readme_reference_lists_every_run_flag_and_its_variable() {
    let (_, help, _) = portcullis(&["run", "--help"]);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| *w != "--help" && *w != "--version")
        .collect();
    assert!(
        flags.len() >= 20,
        "parsed too few flags from --help: {flags:?}"
    );
    for flag in flags {
        assert!(
            readme.contains(&format!("`{flag}")),
            "README's reference lacks {flag}"
        );
        let var = format!(
            "PORTCULLIS_{}",
            flag.trim_start_matches('-')
                .replace('-', "_")
                .to_ascii_uppercase()
        );
        assert!(help.contains(&var), "{flag} has no {var}");
        assert!(readme.contains(&var), "README's reference lacks {var}");
    }
}

#[test]
fn a_busy_listen_address_is_named_at_start() {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let path = keys.path.to_str().expect("path");
    let args = [
        "run",
        "--identity",
        "todos",
        "--issuer",
        ISSUER,
        "--keys-dir",
        path,
        "--listen",
        &addr,
    ];
    let (code, _, err) = portcullis(&[&args[..], &["--admin-listen", &admin]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--listen") && err.contains(&addr), "{err}");
}
