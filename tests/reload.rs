//! Keys from a Secret volume, updated exactly as the kubelet does it (symlink swap): reload,
//! rotation without a failed request, broken updates ignored, start-up without keys, and the
//! SIGTERM drain.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn k2_token() -> String {
    token_with("k2", KEY2, json!({}))
}

#[test]
fn a_new_key_is_picked_up_and_a_removed_one_stops_working() {
    let mut keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &[]);
    sidecar.wait_started();
    assert_eq!(get_with_token(sidecar.addr, "/", &good_token()).status, 200);
    assert_eq!(get_with_token(sidecar.addr, "/", &k2_token()).status, 401);

    keys.update(&[("k1", KEY1), ("k2", KEY2)]);
    assert!(eventually(Duration::from_secs(5), || get_with_token(
        sidecar.addr,
        "/",
        &k2_token()
    )
    .status
        == 200));

    keys.update(&[("k2", KEY2)]);
    assert!(
        eventually(Duration::from_secs(5), || get_with_token(
            sidecar.addr,
            "/",
            &good_token()
        )
        .status
            == 401),
        "a removed key must stop verifying"
    );
    let resp = get_with_token(sidecar.addr, "/", &good_token());
    assert!(
        resp.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("unknown key id")
    );
    let metrics = sidecar.metrics();
    assert!(metrics.contains("portcullis_keys_loaded 1"), "{metrics}");
    assert!(
        metrics.contains("portcullis_key_verifications_total{kid=\"k2\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_key_last_used_timestamp_seconds{kid=\"k1\"}"),
        "{metrics}"
    );
}

#[test]
fn a_cached_token_stops_working_as_soon_as_its_key_is_removed() {
    let mut keys = KeyDir::new(&[("k1", KEY1), ("k2", KEY2)]);
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &[]);
    sidecar.wait_started();
    // The same token three times: verified once, then answered from the cache.
    let token = good_token();
    for _ in 0..3 {
        assert_eq!(get_with_token(sidecar.addr, "/", &token).status, 200);
    }
    keys.update(&[("k2", KEY2)]);
    assert!(eventually(Duration::from_secs(5), || sidecar
        .metrics()
        .contains("portcullis_keys_loaded 1")));
    // The reload is in: the very next request must be refused, cache or not.
    let resp = get_with_token(sidecar.addr, "/", &token);
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["error_description"], "unknown key id");
    assert_eq!(get_with_token(sidecar.addr, "/", &k2_token()).status, 200);
}

#[test]
fn broken_updates_are_ignored_and_counted() {
    let mut keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &[]);
    sidecar.wait_started();

    // A short key, then an empty Secret: each refused, k1 keeps serving.
    keys.update(&[("k1", KEY1), ("weak", b"password")]);
    assert!(eventually(Duration::from_secs(5), || sidecar
        .metrics()
        .contains("portcullis_key_reload_failures_total 1")
        || sidecar
            .metrics()
            .contains("portcullis_key_reload_failures_total 2")));
    assert_eq!(get_with_token(sidecar.addr, "/", &good_token()).status, 200);
    keys.update(&[]);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(
        get_with_token(sidecar.addr, "/", &good_token()).status,
        200,
        "an empty update must not remove keys"
    );

    let log = sidecar.log_text();
    assert!(log.contains("key update rejected"), "{log}");
    assert!(
        log.contains("weak") && log.contains("at least 32 bytes"),
        "the log must name the file: {log}"
    );
    assert!(
        !log.contains("password"),
        "a key's bytes must never be logged"
    );
    let ready = get(sidecar.admin, "/readyz");
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("last update refused"),
        "{}",
        ready.text()
    );
}

#[test]
fn starting_without_keys_answers_503_until_they_arrive() {
    let empty = temp_dir("nokeys");
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&empty, upstream.addr, &[]);
    let ready = get(sidecar.admin, "/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("no keys in"), "{}", ready.text());
    let resp = get_with_token(sidecar.addr, "/", &good_token());
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "temporarily_unavailable");
    assert!(upstream.requests().is_empty());

    std::fs::write(empty.join("k1"), KEY1).expect("write key");
    assert!(eventually(Duration::from_secs(5), || get(
        sidecar.admin,
        "/startupz"
    )
    .status
        == 200));
    assert_eq!(get_with_token(sidecar.addr, "/", &good_token()).status, 200);
}

#[test]
fn rotation_add_switch_remove_loses_no_request() {
    let mut keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Upstream::start();
    let sidecar = Sidecar::start(&keys.path, upstream.addr, &[]);
    sidecar.wait_started();

    // Clients first sign with k1, then (once k2 is everywhere) with k2.
    let use_k2 = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (use_k2, stop, sent, failed) =
            (use_k2.clone(), stop.clone(), sent.clone(), failed.clone());
        let addr = sidecar.addr;
        thread::spawn(move || {
            let (t1, t2) = (good_token(), k2_token());
            while !stop.load(Ordering::Relaxed) {
                let token = if use_k2.load(Ordering::Relaxed) {
                    &t2
                } else {
                    &t1
                };
                let status = get_with_token(addr, "/", token).status;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    thread::sleep(Duration::from_millis(300));
    keys.update(&[("k1", KEY1), ("k2", KEY2)]); // add
    assert!(eventually(Duration::from_secs(5), || sidecar
        .metrics()
        .contains("portcullis_keys_loaded 2")));
    use_k2.store(true, Ordering::Relaxed); // switch the signers
    thread::sleep(Duration::from_millis(300));
    keys.update(&[("k2", KEY2)]); // remove the old key
    assert!(eventually(Duration::from_secs(5), || sidecar
        .metrics()
        .contains("portcullis_keys_loaded 1")));
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread");

    assert!(
        sent.load(Ordering::Relaxed) > 50,
        "too few requests to prove anything"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} requests",
        sent.load(Ordering::Relaxed)
    );
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let keys = KeyDir::new(&[("k1", KEY1)]);
    let upstream = Upstream::start();
    let mut sidecar = Sidecar::start(&keys.path, upstream.addr, &[]);
    sidecar.wait_started();

    let addr = sidecar.addr;
    let slow = thread::spawn(move || get_with_token(addr, "/slow", &good_token()).status);
    thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    sidecar.terminate();

    assert_eq!(
        slow.join().expect("slow request"),
        200,
        "the in-flight request must complete"
    );
    let status = loop {
        if let Some(status) = sidecar.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "did not exit after draining"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        sidecar.log_text()
    );
    assert!(get(addr, "/").status == 0, "no longer accepting");
}
