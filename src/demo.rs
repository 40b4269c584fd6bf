//! `portcullis demo`: the sidecar in front of an embedded echo app, with a fresh key, and the
//! commands to try printed on the terminal. Nothing to install, nothing to configure.
//!
//! The key directory is laid out as the kubelet lays out a Secret volume (a timestamped
//! directory, `..data` pointing at it, one symlink per kid), so the demo exercises exactly the
//! loading path a pod uses.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;

use crate::cli::{DemoArgs, RunArgs};
use crate::config::Settings;
use crate::keys::{KeySet, now_unix};
use crate::mint::{MintRequest, mint};

const IDENTITY: &str = "todos";
const ISSUER: &str = "https://issuer.demo";
const KID: &str = "demo-1";

/// Runs the demo until Ctrl-C.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    let keys_dir = write_kubelet_keys(&dir, KID)?;
    let upstream: SocketAddr = args.upstream.parse().context("--upstream")?;

    let run_args = RunArgs {
        identity: Some(IDENTITY.into()),
        issuers: vec![ISSUER.into()],
        listen: Some(args.listen.clone()),
        admin_listen: Some(args.admin_listen.clone()),
        upstream: Some(args.upstream.clone()),
        keys_dir: Some(keys_dir.clone()),
        public_paths: vec!["GET /public/*".into()],
        ..RunArgs::default()
    };
    let settings = Settings::resolve(&run_args).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::telemetry::init(crate::cli::LogFormat::Text, &settings.log_level);

    start_echo(upstream)?;
    print_guide(&keys_dir, &settings)?;
    let keys = crate::run::start_key_store(&settings);
    let built = crate::run::build(&settings, keys)?;
    crate::run::serve(built, settings.shutdown_timeout)
}

/// Creates `dir/..<timestamp>/<kid>`, `dir/..data -> ..<timestamp>` and
/// `dir/<kid> -> ..data/<kid>`.
pub fn write_kubelet_keys(dir: &Path, kid: &str) -> anyhow::Result<PathBuf> {
    let stamp = "..2026_01_01_00_00_00.000000001";
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join(stamp)).with_context(|| format!("creating {}", dir.display()))?;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    fs::write(dir.join(stamp).join(kid), key)?;
    std::os::unix::fs::symlink(stamp, dir.join("..data"))?;
    std::os::unix::fs::symlink(format!("..data/{kid}"), dir.join(kid))?;
    Ok(dir.to_path_buf())
}

fn start_echo(addr: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("echo app cannot listen on {addr}"))?;
    drop(listener);
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            if let Err(error) = runtime.block_on(crate::echo::serve(addr)) {
                tracing::error!(%error, "echo app stopped");
            }
        })?;
    Ok(())
}

fn print_guide(keys_dir: &Path, settings: &Settings) -> anyhow::Result<()> {
    let keys = KeySet::load(keys_dir)?;
    let key = keys.signing();
    let now = now_unix();
    let base = MintRequest {
        issuer: ISSUER.into(),
        subject: "alice".into(),
        audiences: vec![IDENTITY.into()],
        ttl: 600,
        roles: vec!["reader".into()],
        ..MintRequest::default()
    };
    let good = mint(key, &base, now)?;
    let wrong_aud = mint(
        key,
        &MintRequest {
            audiences: vec!["billing".into()],
            ..base.clone()
        },
        now,
    )?;
    let expired = mint(
        key,
        &MintRequest {
            ttl: -120,
            ..base.clone()
        },
        now,
    )?;
    let url = format!("http://{}", settings.listen);
    let admin = format!("http://{}", settings.admin_listen);

    println!(
        "\nportcullis demo: sidecar {url} -> echo app http://{up}, identity {IDENTITY:?}, issuer {ISSUER:?}\n\
         keys (kubelet layout): {keys}\n\n\
         Accepted (the echo shows x-auth-subject: alice, no Authorization):\n  \
         curl -s {url}/todos -H 'Authorization: Bearer {good}'\n\n\
         Wrong audience (401 invalid_token, \"wrong audience\"):\n  \
         curl -si {url}/todos -H 'Authorization: Bearer {wrong_aud}'\n\n\
         Expired (401 invalid_token, \"token expired\"):\n  \
         curl -si {url}/todos -H 'Authorization: Bearer {expired}'\n\n\
         No token (401 with a Bearer challenge):\n  \
         curl -si {url}/todos\n\n\
         Spoofed identity header (stripped; the echo shows the verified subject):\n  \
         curl -s {url}/todos -H 'X-Auth-Subject: admin' -H 'Authorization: Bearer {good}'\n\n\
         Public route (no token needed): curl -s {url}/public/hello\n\
         Inspect a token offline:\n  \
         portcullis token inspect {wrong_aud} \\\n    \
         --keys-dir {keys} --identity {IDENTITY} --issuer {ISSUER}\n\
         Mint another:\n  \
         portcullis token mint --keys-dir {keys} --issuer {ISSUER} \\\n    \
         --audience {IDENTITY} --subject bob\n\
         Admin:\n  \
         curl -s {admin}/readyz\n  \
         curl -s {admin}/metrics | grep portcullis_requests_total\n\n\
         Ctrl-C to stop.\n",
        up = settings.upstream,
        keys = keys_dir.display(),
    );
    Ok(())
}
