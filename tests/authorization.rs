//! Authorization rules in the running sidecar: claims, 403 naming only the policy, dry run,
//! path normalisation that cannot be used to dodge a rule, and `check` on dead rules.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn with_config(yaml: &str, extra: &[&str]) -> (KeyDir, Upstream, Sidecar) {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Upstream::start();
    let path = temp_dir("authz").join("portcullis.yaml");
    std::fs::write(&path, yaml).expect("config");
    let mut args = vec!["--config", path.to_str().expect("path")];
    args.extend_from_slice(extra);
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &args);
    sidecar.wait_started();
    (keys, upstream, sidecar)
}

const POLICY: &str = "authorization:
  name: todos-policy
  rules:
  - {name: no-admin-paths, action: deny, paths: [/admin, /admin/*], not_claims: {roles: [admin]}}
  - {name: readers, action: allow, methods: [GET], claims: {roles: [reader]}}
  - {name: admins, action: allow, claims: {roles: [admin]}}
";

#[test]
fn claims_decide_and_a_denial_names_only_the_policy() {
    let (_keys, upstream, sidecar) = with_config(POLICY, &["--public-path", "/public/*"]);
    let reader = token_with("k1", KEY1, json!({"roles": ["reader"]}));
    let admin = token_with("k1", KEY1, json!({"roles": "admin"}));

    assert_eq!(get_with_token(sidecar.addr, "/todos", &reader).status, 200);
    let auth = format!("Bearer {reader}");
    let resp = request(
        sidecar.addr,
        "DELETE",
        "/todos/1",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(resp.status, 403);
    let challenge = resp.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("todos-policy"),
        "{challenge}"
    );
    assert!(
        !resp.text().contains("readers") && !resp.text().contains("admins"),
        "the rule must not leak"
    );

    let auth = format!("Bearer {admin}");
    assert_eq!(
        request(
            sidecar.addr,
            "DELETE",
            "/todos/1",
            &[("authorization", &auth)],
            b""
        )
        .status,
        200
    );
    upstream.clear();

    // Neither dot segments nor encoded letters dodge the deny rule, and a public prefix cannot
    // be used to climb out of itself.
    for path in [
        "/todos/../admin",
        "/%61dmin/users",
        "//admin",
        "/public/../admin",
    ] {
        let resp = get_with_token(sidecar.addr, path, &reader);
        assert_eq!(resp.status, 403, "{path}: {}", resp.text());
    }
    assert_eq!(
        get(sidecar.addr, "/public/../admin").status,
        401,
        "no longer public once normalised"
    );
    let resp = get_with_token(sidecar.addr, "/admin%2Fusers", &reader);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "invalid_path");
    let resp = get_with_token(sidecar.addr, "/../../etc/passwd", &reader);
    assert_eq!(resp.status, 400);
    assert!(upstream.requests().is_empty());

    // The app sees the normalised path (so the app and the rules agree).
    assert_eq!(
        get_with_token(sidecar.addr, "/todos/./7//x?q=%2F", &reader).status,
        200
    );
    assert_eq!(upstream.last().target, "/todos/7/x?q=%2F");
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains(
            "portcullis_policy_denials_total{dry_run=\"false\",rule=\"no allow rule matched\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn dry_run_lets_requests_through_and_counts_what_it_would_deny() {
    let yaml = POLICY.replace(
        "  name: todos-policy\n",
        "  name: todos-policy\n  dry_run: true\n",
    );
    let (_keys, upstream, sidecar) = with_config(&yaml, &[]);
    let nobody = token_with("k1", KEY1, json!({"roles": []}));
    let resp = get_with_token(sidecar.addr, "/admin", &nobody);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), sidecar.log_text());
    assert_eq!(upstream.requests().len(), 1);
    // Decisions are counted when the request is logged, just after the response is sent.
    let counted = "portcullis_requests_total{decision=\"allow\",reason=\"dry_run\"} 1";
    assert!(eventually(Duration::from_secs(2), || sidecar
        .metrics()
        .contains(counted)));
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains(
            "portcullis_policy_denials_total{dry_run=\"true\",rule=\"deny rule no-admin-paths\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_requests_total{decision=\"allow\",reason=\"dry_run\"} 1"),
        "{metrics}"
    );
    assert!(sidecar.log_text().contains("would be denied"));
}

#[test]
fn bad_rules_stop_the_start_and_check_reports_dead_ones() {
    let dir = temp_dir("authz-check");
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let write = |name: &str, yaml: &str| {
        let p = dir.join(name);
        std::fs::write(&p, yaml).expect("write");
        p.display().to_string()
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let keys_dir = keys.path.display().to_string();
    let base = [
        "--identity",
        "todos",
        "--issuer",
        ISSUER,
        "--keys-dir",
        &keys_dir,
    ];

    let empty = write(
        "empty.yaml",
        "authorization:\n  rules:\n  - {name: r, action: allow, methods: []}\n",
    );
    let (code, out) = run(&[&["check", "--config", &empty][..], &base].concat());
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("authorization") && out.contains("methods"),
        "{out}"
    );

    let dead = write(
        "dead.yaml",
        "authorization:\n  rules:\n  - {name: reads, action: allow, methods: [GET], not_methods: [GET]}\n",
    );
    let (code, out) = run(&[&["check", "--config", &dead][..], &base].concat());
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("rule `reads`") && out.contains("never"),
        "{out}"
    );

    let (code, out) = run(&[&["check", "--config", &write("ok.yaml", POLICY)][..], &base].concat());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("policy \"todos-policy\", 3 rules"), "{out}");
}
