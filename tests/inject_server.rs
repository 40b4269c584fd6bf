//! The real `portcullis inject` binary over HTTPS on an ephemeral 127.0.0.1 port: fixtures in,
//! `AdmissionReview` responses out, the serving certificate hot-reloaded from a kubelet-style
//! Secret directory.

#[path = "inject_common/mod.rs"]
mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use common::{SecretDir, TestCa, Webhook, https};

/// A webhook serving a fresh certificate from a kubelet-style directory.
fn start(extra: &[&str]) -> Result<(tempfile::TempDir, SecretDir, TestCa, Webhook)> {
    let tmp = tempfile::tempdir()?;
    let ca = TestCa::new("portcullis test CA")?;
    let issued = ca.issue()?;
    let mut dir = SecretDir::new(&tmp.path().join("tls"))?;
    dir.publish(&[("tls.crt", &issued.cert_pem), ("tls.key", &issued.key_pem)])?;
    let webhook = Webhook::start(&dir.path, &ca.cert_pem()?, extra)?;
    Ok((tmp, dir, ca, webhook))
}

fn post(webhook: &Webhook, ca: &TestCa, path: &str, body: &[u8]) -> Result<common::Reply> {
    https(webhook.port, &ca.cert_pem()?, "POST", path, body)
}

#[test]
fn annotated_pod_gets_a_patch_over_https() -> Result<()> {
    let (_tmp, _dir, ca, webhook) = start(&[])?;
    let review = common::fixture("several-containers")?;
    let reply = post(&webhook, &ca, "/mutate", &serde_json::to_vec(&review)?)?;
    assert_eq!(reply.status, 200);

    let answer = reply.json()?;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");

    // The patch is a base64 string on the wire, as the API server expects a Go []byte.
    let encoded = response["patch"]
        .as_str()
        .context("patch is not a base64 string")?;
    let patch: json_patch::Patch = serde_json::from_slice(&BASE64_STANDARD.decode(encoded)?)?;
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch)?;
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "portcullis");
    assert_eq!(pod["spec"]["initContainers"][0]["image"], "portcullis:test");
    assert_eq!(
        pod["spec"]["containers"][1]["livenessProbe"]["httpGet"]["port"],
        8443
    );
    Ok(())
}

#[test]
fn namespace_route_injects_unannotated_pods() -> Result<()> {
    let (_tmp, _dir, ca, webhook) = start(&[])?;
    let review = common::fixture("existing-init-container")?;
    let body = serde_json::to_vec(&review)?;

    let annotated_only = post(&webhook, &ca, "/mutate", &body)?.json()?;
    assert!(annotated_only["response"]["patch"].is_null());
    let enabled = post(&webhook, &ca, "/mutate/enabled-namespace", &body)?.json()?;
    assert!(enabled["response"]["patch"].is_string(), "{enabled}");

    let opted_out = serde_json::to_vec(&common::fixture("opted-out")?)?;
    let answer = post(&webhook, &ca, "/mutate/enabled-namespace", &opted_out)?.json()?;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null());
    Ok(())
}

#[test]
fn malformed_reviews_get_an_error_response_and_the_server_keeps_serving() -> Result<()> {
    let (_tmp, _dir, ca, webhook) = start(&[])?;
    let malformed = serde_json::to_vec(&common::fixture("malformed")?)?;
    for body in [
        &b"{not json"[..],
        &malformed,
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
    ] {
        let reply = post(&webhook, &ca, "/mutate", body)?;
        assert_eq!(reply.status, 400);
        let answer = reply.json()?;
        assert_eq!(answer["response"]["allowed"], false);
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let wrong_method = https(webhook.port, &ca.cert_pem()?, "GET", "/mutate", b"")?;
    assert_eq!(wrong_method.status, 405);
    let unknown = post(&webhook, &ca, "/validate", b"{}")?;
    assert_eq!(unknown.status, 404);

    let review = serde_json::to_vec(&common::fixture("no-ports")?)?;
    assert_eq!(post(&webhook, &ca, "/mutate", &review)?.status, 200);
    Ok(())
}

#[test]
fn fail_open_is_an_explicit_flag() -> Result<()> {
    let body = serde_json::to_vec(&common::fixture("bad-annotation")?)?;

    let (_tmp, _dir, ca, closed) = start(&[])?;
    let answer = post(&closed, &ca, "/mutate", &body)?.json()?;
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("app-port"))
    );

    let (_tmp2, _dir2, ca2, open) = start(&["--unsafe-fail-open"])?;
    let answer = post(&open, &ca2, "/mutate", &body)?.json()?;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null());
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("NOT injected"))
    );
    Ok(())
}

#[test]
fn rotated_certificate_is_served_and_a_broken_update_is_ignored() -> Result<()> {
    let (_tmp, mut dir, ca, webhook) = start(&[])?;
    let ca_pem = ca.cert_pem()?;
    let served =
        || https(webhook.port, &ca_pem, "GET", "/healthz", b"").map(|r| r.served_fingerprint);
    let first = served()?;

    // A normal rotation: the next handshakes present the new certificate.
    let second = ca.issue()?;
    dir.publish(&[("tls.crt", &second.cert_pem), ("tls.key", &second.key_pem)])?;
    let rotated = common::eventually(Duration::from_secs(10), || {
        served().is_ok_and(|f| f == second.fingerprint)
    });
    assert!(rotated, "the new certificate was not picked up");
    assert_ne!(first, second.fingerprint);

    // A broken update (a key that belongs to another certificate) leaves the second serving.
    let third = ca.issue()?;
    dir.publish(&[("tls.crt", &third.cert_pem), ("tls.key", &second.key_pem)])?;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served()?, second.fingerprint);

    // And the watch is still alive: a good update after the broken one is taken.
    dir.publish(&[("tls.crt", &third.cert_pem), ("tls.key", &third.key_pem)])?;
    let healed = common::eventually(Duration::from_secs(10), || {
        served().is_ok_and(|f| f == third.fingerprint)
    });
    assert!(
        healed,
        "the good update after a broken one was not picked up"
    );
    Ok(())
}

#[test]
fn unreadable_certificate_stops_the_start_with_a_clear_message() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "inject",
            "--listen",
            "127.0.0.1:0",
            "--sidecar-image",
            "portcullis:test",
        ])
        .arg("--tls-cert")
        .arg(tmp.path().join("missing.crt"))
        .arg("--tls-key")
        .arg(tmp.path().join("missing.key"))
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).context("stderr is not UTF-8")?;
    assert!(stderr.contains("missing.crt"), "{stderr}");
    Ok(())
}
