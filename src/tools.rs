//! Tools for people and scripts: `token mint`, `token inspect` and `check`.
//!
//! They reuse the sidecar's own code paths (key loading, verification, configuration) so that
//! what they say is exactly what `portcullis run` would do. `inspect` is the offline
//! explanation of a decision: given keys and an identity it says whether the token would be
//! accepted and, if not, precisely why.

use std::io::Read;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::answer::describe;
use crate::cli::{InspectArgs, MintArgs, RunArgs};
use crate::config::Settings;
use crate::keys::{KeySet, now_unix};
use crate::mint::{MintRequest, mint};
use crate::verify::Verifier;

/// `portcullis token mint`: prints one token on standard output.
pub fn mint_command(args: &MintArgs) -> anyhow::Result<()> {
    let keys = KeySet::load(&args.keys_dir).context("--keys-dir")?;
    let key = match &args.kid {
        Some(kid) => keys.get(kid).ok_or_else(|| {
            anyhow!(
                "--kid: no key {kid:?} in {}; present: {}",
                args.keys_dir.display(),
                keys.kids().join(", ")
            )
        })?,
        None => keys.signing(),
    };
    let request = MintRequest {
        issuer: args.issuer.clone(),
        subject: args.subject.clone(),
        audiences: args.audiences.clone(),
        ttl: args.ttl,
        roles: args
            .roles
            .iter()
            .filter(|r| !r.is_empty())
            .cloned()
            .collect(),
        actor: None,
        extra: extra_claims(&args.claims)?,
    };
    println!("{}", mint(key, &request, now_unix())?);
    Ok(())
}

fn extra_claims(specs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for spec in specs {
        let (name, value) = spec.split_once('=').ok_or_else(|| {
            anyhow!("--claim {spec:?}: write NAME=VALUE, e.g. --claim email=bob@example.com")
        })?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// `portcullis token inspect`: shows the token and, with keys, the verdict. Returns whether the
/// token would be accepted (true also when no keys were given).
pub fn inspect_command(args: &InspectArgs) -> anyhow::Result<bool> {
    let token = read_token(&args.token)?;
    let mut parts = token.split('.');
    let (header, payload) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    println!("header: {}", pretty_segment(header));
    println!("claims: {}", pretty_segment(payload));
    if let Some(note) = expiry_note(payload) {
        println!("{note}");
    }

    let Some(dir) = &args.keys_dir else {
        println!("verdict: not checked (give --keys-dir, --identity and --issuer to check it)");
        return Ok(true);
    };
    let identity = args
        .identity
        .clone()
        .ok_or_else(|| anyhow!("--identity is required with --keys-dir"))?;
    if args.issuers.is_empty() {
        bail!("--issuer is required with --keys-dir");
    }
    let keys = KeySet::load(dir).context("--keys-dir")?;
    let verifier = Verifier {
        identity,
        issuers: args.issuers.clone(),
        leeway: args.leeway,
        max_token_bytes: 1 << 20,
    };
    match verifier.verify(&token, &keys, now_unix()) {
        Ok(v) => {
            println!("verdict: accepted (signed with kid {:?})", v.key.kid);
            Ok(true)
        }
        Err(e) => {
            println!(
                "verdict: rejected: {} (reason code {})",
                describe(&e),
                e.reason()
            );
            Ok(false)
        }
    }
}

fn read_token(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the token from standard input")?;
    Ok(text.trim().to_string())
}

fn pretty_segment(segment: &str) -> String {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(segment) else {
        return "(not base64url)".to_string();
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => "(not JSON)".to_string(),
    }
}

fn expiry_note(payload: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()? as i64;
    let now = now_unix() as i64;
    Some(if exp > now {
        format!("expires in {}s", exp - now)
    } else {
        format!("expired {}s ago", now - exp)
    })
}

/// `portcullis check`: validates settings and keys; prints a summary or the first problem.
pub fn check_command(args: &RunArgs) -> Result<(), String> {
    let settings = Settings::resolve(args).map_err(|e| format!("configuration: {e}"))?;
    let keys = KeySet::load(&settings.keys_dir).map_err(|e| {
        format!(
            "keys: {e}; fix: point --keys-dir at the mounted Secret, \
             with one file per kid of 32+ bytes"
        )
    })?;
    println!("ok: identity {:?}", settings.identity);
    println!(
        "  listen {}, upstream {}, admin {}",
        settings.listen, settings.upstream, settings.admin_listen
    );
    println!("  issuers: {}", settings.issuers.join(", "));
    println!(
        "  keys: {} in {} ({}); signing kid {:?}",
        keys.len(),
        settings.keys_dir.display(),
        keys.kids().join(", "),
        keys.signing().kid
    );
    let public: Vec<String> = settings
        .public_paths
        .iter()
        .map(|p| {
            format!(
                "{}{}{}",
                p.method
                    .as_deref()
                    .map(|m| format!("{m} "))
                    .unwrap_or_default(),
                p.path,
                if p.prefix { "*" } else { "" }
            )
        })
        .collect();
    println!(
        "  public paths: {}",
        if public.is_empty() {
            "none".to_string()
        } else {
            public.join(", ")
        }
    );
    if !settings.policy.is_empty() {
        println!(
            "  authorization: policy {:?}, {} rules{}",
            settings.policy.name(),
            settings.policy.rule_count(),
            if settings.policy.is_dry_run() {
                ", dry run"
            } else {
                ""
            }
        );
    }
    let findings = settings.policy.lint();
    for finding in &findings {
        println!("  warning: {finding}");
    }
    if findings.iter().any(|f| f.problem.never_applies()) {
        return Err(
            "authorization: some rules can never take effect (listed above); fix or remove them"
                .into(),
        );
    }
    Ok(())
}
