//! Verification of HS256 tokens (RFC 7519, RFC 7515, with the rules of RFC 8725).
//!
//! The order is fixed and deliberate: shape, header (`alg` must be `HS256`, no `crit`), the
//! key named by `kid`, the signature (constant-time), and only then the claims: `exp`
//! (required), `nbf` and `iat` with the leeway, `iss` against the allowed list, `aud` (string or
//! array) containing this sidecar's identity. NumericDate claims must be JSON numbers; a string
//! `exp` is malformed, not absent. Nothing in a header is ever dereferenced (`jku`, `x5u`, `jwk`).
//!
//! This module decides; it does not answer. [`TokenError`] says why a token failed, and
//! [`crate::answer`] turns that into what the client is told.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, Visitor};

use crate::keys::{Key, KeySet};

/// What a verification checks against, besides the keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub identity: String,
    pub issuers: Vec<String>,
    pub leeway: u64,
    pub max_token_bytes: usize,
}

/// Why a token was refused. Each variant maps to one reason code and one client description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token exceeds the size limit")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("unsupported critical header")]
    UnsupportedCritical,
    #[error("unknown key id")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    #[error("issuer not accepted")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
}

impl TokenError {
    /// Stable reason code, used in metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedAlgorithm => "bad_algorithm",
            Self::UnsupportedCritical => "bad_crit",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::MissingClaim(_) => "missing_claim",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified<'t> {
    /// The key that verified the signature.
    pub key: &'t Key,
    pub claims: Claims,
    /// The payload segment exactly as received: base64url JSON, as the app receives it.
    pub payload_b64: &'t str,
}

impl Verified<'_> {
    /// The whole claim set as a JSON object.
    pub fn claims_map(&self) -> serde_json::Map<String, serde_json::Value> {
        // The payload decoded and parsed once already; only the rules and claim headers need
        // it again, and only then is this cost paid.
        let json = URL_SAFE_NO_PAD.decode(self.payload_b64).unwrap_or_default();
        serde_json::from_slice(&json).unwrap_or_default()
    }
}

/// The claims portcullis itself acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub sub: Option<String>,
    pub iss: String,
    pub exp: f64,
    pub roles: Vec<String>,
    /// `act.sub` (RFC 8693): the service acting on the subject's behalf.
    pub actor: Option<String>,
}

impl Verifier {
    /// Checks `token` against `keys` at time `now` (seconds since the epoch).
    pub fn verify<'t>(
        &self,
        token: &'t str,
        keys: &'t KeySet,
        now: u64,
    ) -> Result<Verified<'t>, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let (header_b64, payload_b64, sig_b64) = split(token)?;

        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let key = with_header_kid(header_b64, |kid| {
            let signature = decode_signature(sig_b64)?;
            find_key(keys, kid, signing_input, &signature)
        })?;

        PAYLOAD
            .with_borrow_mut(|payload| self.check_payload(payload_b64, payload, now))
            .map(|claims| Verified {
                key,
                claims,
                payload_b64,
            })
    }

    /// Decodes the payload into a reused buffer and checks its claims.
    fn check_payload(
        &self,
        payload_b64: &str,
        buf: &mut Vec<u8>,
        now: u64,
    ) -> Result<Claims, TokenError> {
        buf.clear();
        if buf.capacity() > 64 * 1024 {
            // One huge token must not pin its buffer for the life of the thread.
            buf.shrink_to(8192);
        }
        // A SIMD decoder: as strict as the `base64` crate's (no padding, canonical last
        // character), several times faster on the per-request path.
        base64_simd::URL_SAFE_NO_PAD
            .decode_append(payload_b64, buf)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        // Valid UTF-8 checked once for the whole payload (JSON that is not UTF-8 is not JSON),
        // so the parser need not check each string again.
        let text = std::str::from_utf8(buf)
            .map_err(|_| TokenError::Malformed("claims are not a valid JSON object"))?;
        let raw: RawClaims = serde_json::from_str(text)
            .map_err(|_| TokenError::Malformed("claims are not a valid JSON object"))?;
        self.check_claims(raw, now)
    }

    fn check_claims(&self, raw: RawClaims, now: u64) -> Result<Claims, TokenError> {
        let now = now as f64;
        let leeway = self.leeway as f64;

        let exp = numeric(raw.exp, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
        if now >= exp + leeway {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = numeric(raw.nbf, "nbf")?
            && now + leeway < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        if let Some(iat) = numeric(raw.iat, "iat")?
            && iat > now + leeway
        {
            return Err(TokenError::IssuedInFuture);
        }

        let iss = raw.iss.ok_or(TokenError::MissingClaim("iss"))?;
        if !self.issuers.iter().any(|allowed| *allowed == iss) {
            return Err(TokenError::WrongIssuer);
        }
        let aud = match raw.aud {
            None => return Err(TokenError::MissingClaim("aud")),
            Some(Strings::Invalid) => {
                return Err(TokenError::Malformed(
                    "aud must be a string or an array of strings",
                ));
            }
            Some(Strings::List(list)) => list,
        };
        if !aud.iter().any(|a| *a == self.identity) {
            return Err(TokenError::WrongAudience);
        }

        let roles = match raw.roles {
            None => Vec::new(),
            Some(Strings::Invalid) => {
                return Err(TokenError::Malformed(
                    "roles must be a string or an array of strings",
                ));
            }
            Some(Strings::List(list)) => list.into_iter().map(Cow::into_owned).collect(),
        };
        Ok(Claims {
            sub: raw.sub.map(Cow::into_owned),
            iss: iss.into_owned(),
            exp,
            roles,
            actor: raw.act.and_then(|a| a.sub).map(Cow::into_owned),
        })
    }
}

/// Splits `h.p.s`; each part must be non-empty base64url.
fn split(token: &str) -> Result<(&str, &str, &str), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Malformed("empty token"));
    }
    let bytes = token.as_bytes();
    let dot = |from: usize| memchr::memchr(b'.', &bytes[from..]).map(|i| from + i);
    let first = dot(0);
    let (Some(first), Some(second)) = (first, first.and_then(|f| dot(f + 1))) else {
        return Err(TokenError::Malformed("a JWS has three dot-separated parts"));
    };
    if dot(second + 1).is_some() {
        return Err(TokenError::Malformed("a JWS has three dot-separated parts"));
    }
    let (h, p, s) = (
        &token[..first],
        &token[first + 1..second],
        &token[second + 1..],
    );
    if h.is_empty() || p.is_empty() {
        return Err(TokenError::Malformed("empty header or payload"));
    }
    if s.is_empty() {
        return Err(TokenError::Malformed("token is unsigned"));
    }
    Ok((h, p, s))
}

/// Largest decoded JOSE header accepted; real ones are under 100 bytes.
const MAX_HEADER_JSON: usize = 512;

thread_local! {
    /// Decoded payloads are parsed from this buffer, reused across requests on a thread.
    static PAYLOAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// The last JOSE header segment that passed, and its `kid`: an issuer sends the same header
    /// on every token it signs with one key, so it is decoded and checked once, not per token.
    static LAST_HEADER: std::cell::RefCell<(String, Option<String>)> =
        const { std::cell::RefCell::new((String::new(), None)) };
}

/// Checks the header segment (`alg` must be `HS256`, no `crit`), then runs `then` with its
/// `kid`.
fn with_header_kid<'k>(
    segment: &str,
    then: impl FnOnce(Option<&str>) -> Result<&'k Key, TokenError>,
) -> Result<&'k Key, TokenError> {
    let mut then = Some(then);
    let known = LAST_HEADER.with_borrow(|(last, kid)| {
        (last == segment).then(|| then.take().map(|f| f(kid.as_deref())))
    });
    if let Some(Some(result)) = known {
        return result;
    }
    let mut header_buf = [0u8; MAX_HEADER_JSON];
    let header_json = decode_header(segment, &mut header_buf)?;
    let header: Header<'_> = serde_json::from_slice(header_json)
        .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
    if header.alg != "HS256" {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    if header.crit.is_some() {
        return Err(TokenError::UnsupportedCritical);
    }
    if segment.len() <= MAX_HEADER_JSON {
        LAST_HEADER.with_borrow_mut(|(last, last_kid)| {
            last.clear();
            last.push_str(segment);
            *last_kid = header.kid.as_deref().map(str::to_string);
        });
    }
    match then.take() {
        Some(f) => f(header.kid.as_deref()),
        None => Err(TokenError::Malformed("header is not a JSON object")),
    }
}

/// Decodes the header segment into a stack buffer.
fn decode_header<'b>(
    segment: &str,
    buf: &'b mut [u8; MAX_HEADER_JSON],
) -> Result<&'b [u8], TokenError> {
    if segment.len() > MAX_HEADER_JSON * 4 / 3 {
        return Err(TokenError::Malformed("header is too large"));
    }
    let n = URL_SAFE_NO_PAD
        .decode_slice(segment, buf)
        .map_err(|_| TokenError::Malformed("header is not base64url"))?;
    Ok(&buf[..n])
}

/// An HS256 signature is exactly 32 bytes: 43 base64url characters.
fn decode_signature(segment: &str) -> Result<[u8; 32], TokenError> {
    let mut sig = [0u8; 32];
    if segment.len() != 43 {
        return Err(TokenError::Malformed(
            "signature has the wrong length for HS256",
        ));
    }
    match base64_simd::URL_SAFE_NO_PAD
        .decode(segment.as_bytes(), base64_simd::Out::from_slice(&mut sig))
    {
        Ok(decoded) if decoded.len() == 32 => Ok(sig),
        _ => Err(TokenError::Malformed("signature is not base64url")),
    }
}

/// The key named by `kid`, or, without a kid, the first key whose MAC matches.
fn find_key<'k>(
    keys: &'k KeySet,
    kid: Option<&str>,
    input: &[u8],
    sig: &[u8; 32],
) -> Result<&'k Key, TokenError> {
    let matches = |key: &Key| {
        let mut mac = key.mac();
        mac.update(input);
        crate::cache::constant_time_eq(&mac.finalize().into_bytes(), sig)
    };
    match kid {
        Some(kid) => {
            let key = keys.get(kid).ok_or(TokenError::UnknownKey)?;
            if matches(key) {
                Ok(key)
            } else {
                Err(TokenError::BadSignature)
            }
        }
        None => keys
            .all()
            .iter()
            .find(|k| matches(k))
            .ok_or(TokenError::BadSignature),
    }
}

fn numeric(value: Option<Numeric>, name: &'static str) -> Result<Option<f64>, TokenError> {
    match value {
        None => Ok(None),
        Some(Numeric::Number(n)) => Ok(Some(n)),
        Some(Numeric::NotANumber) => Err(TokenError::Malformed(match name {
            "exp" => "exp must be a number",
            "nbf" => "nbf must be a number",
            _ => "iat must be a number",
        })),
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow, default)]
    iss: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sub: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    aud: Option<Strings<'a>>,
    #[serde(default)]
    exp: Option<Numeric>,
    #[serde(default)]
    nbf: Option<Numeric>,
    #[serde(default)]
    iat: Option<Numeric>,
    #[serde(borrow, default)]
    roles: Option<Strings<'a>>,
    #[serde(borrow, default)]
    act: Option<Actor<'a>>,
}

#[derive(Deserialize)]
struct Actor<'a> {
    #[serde(borrow, default)]
    sub: Option<Cow<'a, str>>,
}

/// A NumericDate, or a value of another type (which is an error, reported precisely).
enum Numeric {
    Number(f64),
    NotANumber,
}

impl<'de> Deserialize<'de> for Numeric {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Numeric;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Numeric, E> {
                Ok(Numeric::Number(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Numeric, E> {
                Ok(Numeric::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Numeric, E> {
                Ok(Numeric::Number(v))
            }
            fn visit_str<E>(self, _: &str) -> Result<Numeric, E> {
                Ok(Numeric::NotANumber)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Numeric, E> {
                Ok(Numeric::NotANumber)
            }
            fn visit_unit<E>(self) -> Result<Numeric, E> {
                Ok(Numeric::NotANumber)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Numeric, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Numeric::NotANumber)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Numeric, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Numeric::NotANumber)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string or an array of strings (`aud`, `roles`), or anything else, reported precisely.
enum Strings<'a> {
    List(Vec<Cow<'a, str>>),
    Invalid,
}

impl<'de: 'a, 'a> Deserialize<'de> for Strings<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strings<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Strings<'de>, E> {
                Ok(Strings::List(vec![Cow::Borrowed(v)]))
            }
            fn visit_str<E>(self, v: &str) -> Result<Strings<'de>, E> {
                Ok(Strings::List(vec![Cow::Owned(v.to_string())]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Strings<'de>, A::Error> {
                let mut out = Vec::new();
                let mut valid = true;
                while let Some(item) = seq.next_element::<Item<'de>>()? {
                    match item {
                        Item::Str(s) => out.push(s),
                        Item::Other => valid = false,
                    }
                }
                Ok(if valid {
                    Strings::List(out)
                } else {
                    Strings::Invalid
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Strings<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Strings::Invalid)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Strings<'de>, E> {
                Ok(Strings::Invalid)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Strings<'de>, E> {
                Ok(Strings::Invalid)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Strings<'de>, E> {
                Ok(Strings::Invalid)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Strings<'de>, E> {
                Ok(Strings::Invalid)
            }
            fn visit_unit<E>(self) -> Result<Strings<'de>, E> {
                Ok(Strings::Invalid)
            }
        }
        d.deserialize_any(V)
    }
}

/// One array element of [`Strings`].
enum Item<'a> {
    Str(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Item<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Strings::deserialize(d)? {
            Strings::List(mut v) if v.len() == 1 => Ok(Item::Str(v.remove(0))),
            _ => Ok(Item::Other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn keyset() -> (std::path::PathBuf, KeySet) {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-verify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::create_dir_all(&dir);
        std::fs::write(dir.join("k1"), KEY).expect("write key");
        let set = KeySet::load(&dir).expect("load");
        (dir, set)
    }

    fn sign(header: &str, payload: &str, key: &[u8]) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let mut mac = crate::keys::HmacSha256::new_from_slice(key).expect("hmac");
        mac.update(input.as_bytes());
        format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn verifier() -> Verifier {
        Verifier {
            identity: "todos".into(),
            issuers: vec!["iss".into()],
            leeway: 5,
            max_token_bytes: 8192,
        }
    }

    fn check(header: &str, payload: &str) -> Result<Claims, TokenError> {
        let (_dir, keys) = keyset();
        let token = sign(header, payload, KEY);
        verifier().verify(&token, &keys, NOW).map(|v| v.claims)
    }

    const H: &str = r#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#;

    #[test]
    fn valid_token_yields_its_claims() {
        let c = check(
            H,
            r#"{"iss":"iss","aud":["x","todos"],"sub":"bob","exp":1800000100,"roles":["a","b"]}"#,
        )
        .expect("valid");
        assert_eq!(c.sub.as_deref(), Some("bob"));
        assert_eq!(c.roles, vec!["a", "b"]);
    }

    #[test]
    fn the_remembered_header_never_stands_in_for_another() {
        let (_dir, keys) = keyset();
        let p = r#"{"iss":"iss","aud":"todos","exp":1800000100}"#;
        let v = verifier();
        let good = sign(H, p, KEY);
        assert!(v.verify(&good, &keys, NOW).is_ok());
        // Each differs from the remembered header, so each is decoded and checked again.
        let none = sign(r#"{"alg":"none","kid":"k1"}"#, p, KEY);
        assert_eq!(
            v.verify(&none, &keys, NOW).err(),
            Some(TokenError::UnsupportedAlgorithm)
        );
        let crit = sign(r#"{"alg":"HS256","kid":"k1","crit":["x"]}"#, p, KEY);
        assert_eq!(
            v.verify(&crit, &keys, NOW).err(),
            Some(TokenError::UnsupportedCritical)
        );
        let other_kid = sign(r#"{"alg":"HS256","kid":"k9"}"#, p, KEY);
        assert_eq!(
            v.verify(&other_kid, &keys, NOW).err(),
            Some(TokenError::UnknownKey)
        );
        // The remembered header still needs a good signature.
        let last = if good.ends_with('A') { "B" } else { "A" };
        let forged = format!("{}{last}", &good[..good.len() - 1]);
        assert!(v.verify(&forged, &keys, NOW).is_err());
        assert!(v.verify(&good, &keys, NOW).is_ok());
    }

    #[test]
    fn base64url_is_decoded_strictly() {
        // Padding, the standard alphabet and non-canonical last characters are all refused,
        // exactly as the `base64` crate's URL_SAFE_NO_PAD refuses them.
        for segment in ["QUI=", "a+b/", "AB", "AAB", "QU", "Q", "@@@@"] {
            let strict = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment);
            let mut buf = Vec::new();
            let ours = base64_simd::URL_SAFE_NO_PAD.decode_append(segment, &mut buf);
            assert!(strict.is_err() && ours.is_err(), "{segment}");
        }
        let mut buf = Vec::new();
        assert!(
            base64_simd::URL_SAFE_NO_PAD
                .decode_append("a-_b", &mut buf)
                .is_ok()
        );
        assert_eq!(buf, B64.decode("a-_b").expect("valid"));
    }

    #[test]
    fn string_exp_is_malformed_not_ignored() {
        let e =
            check(H, r#"{"iss":"iss","aud":"todos","exp":"1900000000"}"#).expect_err("string exp");
        assert_eq!(e, TokenError::Malformed("exp must be a number"));
    }

    #[test]
    fn each_claim_rule_has_its_reason() {
        let cases = [
            (
                r#"{"iss":"iss","aud":"todos"}"#,
                TokenError::MissingClaim("exp"),
            ),
            (
                r#"{"iss":"iss","aud":"todos","exp":1799999990}"#,
                TokenError::Expired,
            ),
            (
                r#"{"iss":"iss","aud":"todos","exp":1800000100,"nbf":1800000060}"#,
                TokenError::NotYetValid,
            ),
            (
                r#"{"iss":"iss","aud":"todos","exp":1800000100,"iat":1800000060}"#,
                TokenError::IssuedInFuture,
            ),
            (
                r#"{"iss":"other","aud":"todos","exp":1800000100}"#,
                TokenError::WrongIssuer,
            ),
            (
                r#"{"aud":"todos","exp":1800000100}"#,
                TokenError::MissingClaim("iss"),
            ),
            (
                r#"{"iss":"iss","aud":"billing","exp":1800000100}"#,
                TokenError::WrongAudience,
            ),
            (
                r#"{"iss":"iss","exp":1800000100}"#,
                TokenError::MissingClaim("aud"),
            ),
        ];
        for (payload, want) in cases {
            assert_eq!(check(H, payload).expect_err(payload), want, "{payload}");
        }
    }

    #[test]
    fn leeway_tolerates_small_skew() {
        assert!(check(H, r#"{"iss":"iss","aud":"todos","exp":1799999997}"#).is_ok());
        assert!(
            check(
                H,
                r#"{"iss":"iss","aud":"todos","exp":1800000100,"nbf":1800000004}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn header_rules() {
        let p = r#"{"iss":"iss","aud":"todos","exp":1800000100}"#;
        assert_eq!(
            check(r#"{"alg":"none"}"#, p).expect_err("none"),
            TokenError::UnsupportedAlgorithm
        );
        assert_eq!(
            check(r#"{"alg":"HS512","kid":"k1"}"#, p).expect_err("hs512"),
            TokenError::UnsupportedAlgorithm
        );
        assert_eq!(
            check(r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#, p).expect_err("crit"),
            TokenError::UnsupportedCritical
        );
        assert_eq!(
            check(r#"{"alg":"HS256","kid":"zz"}"#, p).expect_err("kid"),
            TokenError::UnknownKey
        );
        assert!(
            check(r#"{"alg":"HS256"}"#, p).is_ok(),
            "a token without kid is tried against every key"
        );
    }

    #[test]
    fn wrong_key_and_tampering_fail_the_signature() {
        let (_dir, keys) = keyset();
        let p = r#"{"iss":"iss","aud":"todos","exp":1800000100}"#;
        let other = sign(H, p, b"ffffffffffffffffffffffffffffffff");
        assert_eq!(
            verifier().verify(&other, &keys, NOW).expect_err("key"),
            TokenError::BadSignature
        );
        let good = sign(H, p, KEY);
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(r#"{"iss":"iss","aud":"todos","exp":1900000000}"#),
            parts[2]
        );
        assert_eq!(
            verifier().verify(&forged, &keys, NOW).expect_err("tamper"),
            TokenError::BadSignature
        );
    }

    #[test]
    fn large_tokens_verify() {
        let pad = "g".repeat(1800);
        let payload = format!(r#"{{"iss":"iss","aud":"todos","exp":1800000100,"groups":"{pad}"}}"#);
        let claims = check(H, &payload).expect("a 2,400-character token is valid");
        assert_eq!(claims.iss, "iss");
    }

    #[test]
    fn shapes_are_malformed() {
        let (_dir, keys) = keyset();
        for bad in ["", "a", "a.b", "a.b.c.d", "..", "a.b.", "!!!.b.c"] {
            let e = verifier().verify(bad, &keys, NOW).expect_err(bad);
            assert!(matches!(e, TokenError::Malformed(_)), "{bad}: {e:?}");
        }
        let mut v = verifier();
        v.max_token_bytes = 10;
        assert_eq!(
            v.verify("aaaaaaaaaaaaaaaaa.b.c", &keys, NOW)
                .expect_err("size"),
            TokenError::TooLarge
        );
    }
}
