//! Signing HS256 tokens with jsonwebtoken: for `portcullis token mint` and the outbound side.
//!
//! Minted tokens carry `iss`, `sub`, `aud`, `iat`, `exp`, a random `jti` and the signing `kid`
//! in the header, plus `roles`, `act` (RFC 8693) and any extra claims asked for. Verification
//! does not go through this module (see [`crate::verify`]), so the two check each other.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::keys::Key;

/// What to put in a token.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    /// Lifetime in seconds; negative gives an already expired token (useful in tests).
    pub ttl: i64,
    pub roles: Vec<String>,
    /// The acting service, as `act.sub`.
    pub actor: Option<String>,
    /// Further claims; they cannot replace the registered ones above.
    pub extra: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("claim {0:?} is set by portcullis and cannot be given as an extra claim")]
    ReservedClaim(String),
    #[error("at least one audience is required")]
    NoAudience,
    #[error("cannot sign: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

const RESERVED: [&str; 8] = ["iss", "sub", "aud", "iat", "exp", "jti", "roles", "act"];

/// Signs `req` with `key` at time `now`.
pub fn mint(key: &Key, req: &MintRequest, now: u64) -> Result<String, MintError> {
    if let Some(name) = req.extra.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(MintError::ReservedClaim(name.clone()));
    }
    let aud = match req.audiences.as_slice() {
        [] => return Err(MintError::NoAudience),
        [one] => Value::from(one.as_str()),
        many => Value::from(many.to_vec()),
    };
    let mut claims = req.extra.clone();
    claims.insert("iss".into(), req.issuer.clone().into());
    claims.insert("sub".into(), req.subject.clone().into());
    claims.insert("aud".into(), aud);
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now as i64).saturating_add(req.ttl).into());
    claims.insert("jti".into(), random_id().into());
    if !req.roles.is_empty() {
        claims.insert("roles".into(), req.roles.clone().into());
    }
    if let Some(actor) = &req.actor {
        claims.insert("act".into(), serde_json::json!({ "sub": actor }));
    }

    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".into());
    let encoding = EncodingKey::from_secret(key.secret())?;
    Ok(jsonwebtoken::encode(&header, &claims, &encoding)?)
}

/// 128 random bits, base64url: unguessable, for `jti` and context handles.
pub fn random_id() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
