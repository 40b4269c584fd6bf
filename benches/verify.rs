//! Micro-benchmarks of the per-request crypto: verifying a 427-character and a 2,400-character
//! HS256 token, and minting an outbound token.
//!
//! Run: `cargo bench --bench verify`. `verify_*` is a full verification of a token seen for the
//! first time; `cached_*` is what the same token costs when it comes again, a hit in the
//! verified-token cache (lookup, constant-time comparison of the whole token, expiry check).

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use std::sync::Arc;

use portcullis::cache::{Established, TokenCache};
use portcullis::keys::{KeySet, now_unix};
use portcullis::mint::{MintRequest, mint};
use portcullis::verify::Verifier;
use sha2::Sha256;

const KEY: &[u8] = b"bench-secret-0123456789abcdefghij";

fn keys() -> (PathBuf, KeySet) {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("bench"), KEY).expect("write key");
    let set = KeySet::load(&dir).expect("load");
    (dir, set)
}

/// A token shaped like an identity provider's: registered claims, email, roles; `pad` adds a
/// claim of that many characters to reach a target size.
fn token(pad: usize) -> String {
    let now = now_unix();
    let mut claims = serde_json::json!({
        "iss": "https://auth.example.com", "aud": "todos", "sub": "7f0e5f2c-43c1-4a8a-9d3e-2b1a7c9d4e11",
        "exp": now + 3600, "iat": now, "jti": "b2a1c3d4-e5f6-4711-8899-aabbccddeeff",
        "email": "alice@example.com", "roles": ["reader", "writer"],
    });
    if pad > 0 {
        claims["groups"] = serde_json::Value::from("g".repeat(pad));
    }
    let input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","kid":"bench","typ":"JWT"}"#),
        B64.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("hmac");
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// The pad that makes a token `len` characters long.
fn token_of_len(len: usize) -> String {
    let base = token(0).len();
    let mut pad = (len.saturating_sub(base + 13)) * 3 / 4;
    loop {
        let t = token(pad);
        if t.len() >= len {
            return t;
        }
        pad += 1;
    }
}

fn bench(c: &mut Criterion) {
    let (_dir, keys) = keys();
    let verifier = Verifier {
        identity: "todos".into(),
        issuers: vec!["https://auth.example.com".into()],
        leeway: 5,
        max_token_bytes: 8192,
    };
    for len in [427usize, 2400] {
        let t = token_of_len(len);
        // Minted now, verified at the same instant: iat must not lie in the verifier's future.
        let now = now_unix();
        assert!(verifier.verify(&t, &keys, now).is_ok());
        c.bench_function(&format!("verify_{}_chars", t.len()), |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&t), &keys, now)
                    .map(|v| v.claims.exp)
            })
        });

        let cache = TokenCache::new(1024);
        let v = verifier.verify(&t, &keys, now).expect("valid");
        let established = Established {
            kid: v.key.kid.as_str().into(),
            claims: Arc::new(v.claims.clone()),
            claims_map: None,
        };
        cache.put(&t, &keys, v.claims.exp + 5.0, &established);
        assert!(cache.get(&t, &keys, now).is_some());
        c.bench_function(&format!("cached_{}_chars", t.len()), |b| {
            b.iter(|| cache.get(black_box(&t), &keys, now).map(|e| e.claims.exp))
        });
    }
    let request = MintRequest {
        issuer: "share".into(),
        subject: "bob".into(),
        audiences: vec!["todos".into()],
        ttl: 60,
        roles: vec!["user".into()],
        actor: Some("share".into()),
        ..MintRequest::default()
    };
    let now = now_unix();
    c.bench_function("mint_outbound_on_behalf_of", |b| {
        b.iter(|| mint(keys.signing(), black_box(&request), now))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
