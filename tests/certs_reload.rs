//! `certs::CertStore` on a kubelet-style Secret directory: a rotation swaps the snapshot, a
//! broken update keeps the old one and is counted, the watcher picks changes up by itself.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::{SecretDir, TestCa};
use portcullis::certs::{CertError, CertPaths, CertStore, Reload};
use portcullis::watch::WatchOptions;

fn paths(dir: &SecretDir, with_ca: bool) -> CertPaths {
    CertPaths {
        cert: dir.path.join("tls.crt"),
        key: dir.path.join("tls.key"),
        ca: with_ca.then(|| dir.path.join("ca.crt")),
    }
}

#[test]
fn rotation_swaps_and_broken_updates_keep_the_old_certificate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = TestCa::new("store CA")?;
    let (first, second) = (ca.issue()?, ca.issue()?);
    let ca_pem = ca.cert_pem()?;
    let mut dir = SecretDir::new(tmp.path())?;
    dir.publish(&[
        ("tls.crt", &first.cert_pem),
        ("tls.key", &first.key_pem),
        ("ca.crt", &ca_pem),
    ])?;

    let store = CertStore::load("test", paths(&dir, true))?;
    assert_eq!(store.current().fingerprint(), first.fingerprint);
    assert_eq!(
        store.current().intermediates().len(),
        1,
        "the chain's CA is sent along"
    );
    assert_eq!(store.current().ca_bundle().map(<[_]>::len), Some(1));
    assert_eq!(store.reload()?, Reload::Unchanged);

    dir.publish(&[
        ("tls.crt", &second.cert_pem),
        ("tls.key", &second.key_pem),
        ("ca.crt", &ca_pem),
    ])?;
    assert_eq!(store.reload()?, Reload::Swapped);
    assert_eq!(store.current().fingerprint(), second.fingerprint);
    assert_eq!((store.reloads(), store.reload_failures()), (1, 0));

    // Mismatched pair, garbage, an expired certificate: each fails, counted, second keeps serving.
    let expired = ca.issue_expired()?;
    let broken: [(&[u8], &[u8]); 3] = [
        (&first.cert_pem, &second.key_pem),
        (
            b"-----BEGIN CERTIFICATE-----\nnot base64\n",
            &second.key_pem,
        ),
        (&expired.cert_pem, &expired.key_pem),
    ];
    for (cert, key) in broken {
        dir.publish(&[("tls.crt", cert), ("tls.key", key), ("ca.crt", &ca_pem)])?;
        assert!(store.reload().is_err());
        assert_eq!(store.current().fingerprint(), second.fingerprint);
    }
    assert_eq!((store.reloads(), store.reload_failures()), (1, 3));
    Ok(())
}

#[test]
fn mismatched_key_is_named_in_the_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = TestCa::new("store CA")?;
    let (first, second) = (ca.issue()?, ca.issue()?);
    let mut dir = SecretDir::new(tmp.path())?;
    dir.publish(&[("tls.crt", &first.cert_pem), ("tls.key", &second.key_pem)])?;
    match CertStore::load("test", paths(&dir, false)) {
        Err(CertError::KeyMismatch { key, .. }) => assert!(key.ends_with("tls.key")),
        other => anyhow::bail!("expected KeyMismatch, got {other:?}"),
    }
    Ok(())
}

#[test]
fn watcher_reloads_without_being_asked() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = TestCa::new("store CA")?;
    let (first, second) = (ca.issue()?, ca.issue()?);
    let mut dir = SecretDir::new(tmp.path())?;
    dir.publish(&[("tls.crt", &first.cert_pem), ("tls.key", &first.key_pem)])?;

    let store = Arc::new(CertStore::load("test", paths(&dir, false))?);
    let options = WatchOptions {
        debounce: Duration::from_millis(50),
        rescan: Duration::from_secs(60),
    };
    store.watch(options);
    // The watch is registered on its own thread; give it a moment before the first change
    // (a change before that is caught by the rescan, which this test does not wait for).
    std::thread::sleep(Duration::from_millis(300));
    dir.publish(&[("tls.crt", &second.cert_pem), ("tls.key", &second.key_pem)])?;
    let swapped = common::eventually(Duration::from_secs(10), || {
        store.current().fingerprint() == second.fingerprint
    });
    assert!(swapped, "the watcher did not pick up the rotation");
    Ok(())
}

#[test]
fn a_read_that_straddles_an_update_is_retried() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = TestCa::new("store CA")?;
    let (old, new) = (ca.issue()?, ca.issue()?);
    let mut dir = SecretDir::new(tmp.path())?;
    // What a reader can see mid-update: the new certificate with the old key.
    dir.publish(&[("tls.crt", &new.cert_pem), ("tls.key", &old.key_pem)])?;
    let paths = paths(&dir, false);

    let expected = new.fingerprint.clone();
    let finisher = std::thread::spawn(move || -> Result<()> {
        std::thread::sleep(Duration::from_millis(40));
        dir.publish(&[("tls.crt", &new.cert_pem), ("tls.key", &new.key_pem)])
    });
    // The first read finds a mismatched pair; a later one, the completed update.
    let store = CertStore::load("test", paths)?;
    finisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    assert_eq!(store.current().fingerprint(), expected);
    Ok(())
}
