//! The inbound decision, independent of the HTTP engine that carries the request.
//!
//! Both engines ([`crate::forward`] for plain HTTP, [`crate::proxy`] on pingora for TLS) strip
//! the identity headers and normalise the path themselves, then hand [`Pipeline::decide`] what
//! it needs to know about the request. It answers with a refusal, or with the identity headers
//! the app is to receive (written into a [`HeaderSink`], so neither engine builds an
//! intermediate header map) and the reason that is counted when the request ends.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderName;

use crate::answer::{Answer, Rejection};
use crate::auth::{self, Authorization};
use crate::cache::{Established, TokenCache};
use crate::config::{AuthMode, PublicPath, Settings};
use crate::context::{Caller, ContextStore};
use crate::keys::{KeySet, KeyStore, now_unix};
use crate::metrics::Metrics;
use crate::rules::{Policy, RequestFacts};
use crate::tls::PeerIdentity;
use crate::verify::{Claims, TokenError, Verifier};

/// What the pipeline needs to know about one request.
pub struct Inbound<'a> {
    pub method: &'a str,
    /// The path in its normal form (see [`crate::rules::normalize_path`]).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authorization: Authorization<'a>,
    /// Size of the request line and headers.
    pub head_bytes: usize,
    /// The identity the TLS handshake established, if any.
    pub peer: Option<&'a PeerIdentity>,
}

/// Where the identity headers go; values have been checked with [`header_value_ok`].
pub trait HeaderSink {
    fn add(&mut self, name: &str, value: &str);
}

/// A request that may go on to the app.
#[derive(Debug)]
pub struct Allowed {
    /// Counted when the request ends: `verified`, `public` or `dry_run`.
    pub reason: &'static str,
    /// The on-behalf-of handle handed to the app; close it with [`Pipeline::finish`].
    pub context: Option<String>,
}

/// The inbound sidecar's policy: who may call, and what the app is told about them.
pub struct Pipeline {
    pub identity: String,
    public_paths: Vec<PublicPath>,
    verifier: Verifier,
    cache: TokenCache,
    /// Pass `Authorization` on to the app (off by default: the app never sees the token).
    pub forward_token: bool,
    pub max_header_bytes: usize,
    claim_headers: Vec<(String, HeaderName)>,
    /// The configured claim headers: stripped from every request like `x-auth-*`.
    pub claim_header_names: Vec<HeaderName>,
    auth: Vec<AuthMode>,
    policy: Policy,
    keys: Arc<KeyStore>,
    pub metrics: Arc<Metrics>,
    /// Present when the egress side runs: verified users get a context handle.
    contexts: Option<Arc<ContextStore>>,
}

/// Who a request is from, once authenticated.
struct Authenticated {
    caller: Option<Caller>,
    /// The mTLS peer identity and the token subject: what rules call principals.
    principals: Vec<String>,
    /// The verified claim set, parsed only when the rules or claim headers need it.
    claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

impl Pipeline {
    pub fn new(
        settings: &Settings,
        keys: Arc<KeyStore>,
        metrics: Arc<Metrics>,
        contexts: Option<Arc<ContextStore>>,
    ) -> Self {
        Self {
            identity: settings.identity.clone(),
            public_paths: settings.public_paths.clone(),
            verifier: Verifier {
                identity: settings.identity.clone(),
                issuers: settings.issuers.clone(),
                leeway: settings.leeway,
                max_token_bytes: settings.max_token_bytes,
            },
            cache: TokenCache::new(settings.token_cache),
            forward_token: settings.forward_token,
            max_header_bytes: settings.max_header_bytes,
            claim_headers: settings.claim_headers.clone(),
            claim_header_names: settings
                .claim_headers
                .iter()
                .map(|(_, h)| h.clone())
                .collect(),
            auth: settings.auth.clone(),
            policy: settings.policy.clone(),
            keys,
            metrics,
            contexts,
        }
    }

    /// Whether a request header is reserved for portcullis and must never come from a caller.
    pub fn is_identity_header(&self, name: &str) -> bool {
        auth::is_identity_header(name, &self.claim_header_names)
    }

    /// Public route, authentication, authorization; on success the identity headers are in
    /// `sink`. The caller has already stripped the identity headers and normalised the path.
    pub fn decide(
        &self,
        req: &Inbound<'_>,
        sink: &mut impl HeaderSink,
    ) -> Result<Allowed, Rejection> {
        if req.head_bytes > self.max_header_bytes {
            return Err(Rejection::HeadTooLarge);
        }
        if self
            .public_paths
            .iter()
            .any(|r| r.matches(req.method, req.path))
        {
            return Ok(Allowed {
                reason: "public",
                context: None,
            });
        }
        let who = self.authenticate(req, sink)?;
        let reason = self.authorize(req, &who)?;
        let context = match (&self.contexts, who.caller) {
            (Some(store), Some(caller)) => store.open(caller),
            _ => None,
        };
        Ok(Allowed { reason, context })
    }

    /// Logs a refusal and builds its answer.
    pub fn refuse(&self, rejection: &Rejection, method: &str, path: &str, client: &str) -> Answer {
        let answer = rejection.answer(&self.identity);
        tracing::info!(
            reason = rejection.reason(),
            status = answer.status,
            method,
            path,
            client,
            "request denied"
        );
        answer
    }

    /// Ends a request: counts its decision, records its latency, closes its context handle.
    pub fn finish(&self, reason: &str, context: Option<&str>, start: Instant) {
        if let (Some(store), Some(handle)) = (&self.contexts, context) {
            store.close(handle);
        }
        if !reason.is_empty() {
            self.metrics.decided(reason);
        }
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
    }

    /// Authenticates the request by the configured modes; on success returns who called.
    fn authenticate(
        &self,
        req: &Inbound<'_>,
        sink: &mut impl HeaderSink,
    ) -> Result<Authenticated, Rejection> {
        let token = match auth::bearer_token(req.authorization, req.query) {
            Ok(token) => Some(token),
            Err(Rejection::MissingCredentials) => None,
            Err(other) => return Err(other),
        };

        // A presented token must be valid, even where a certificate alone would do.
        let keys = match token {
            Some(_) => Some(self.keys.current().ok_or(Rejection::NoKeys)?),
            None => None,
        };
        let now = now_unix();
        let verified = match (token, keys.as_deref()) {
            (Some(t), Some(k)) => Some(self.establish(t, k, now)?),
            _ => None,
        };
        let peer_id = match req.peer {
            Some(PeerIdentity::Verified(id)) => Some(id.as_str()),
            _ => None,
        };
        let satisfied = self.auth.iter().any(|mode| match mode {
            AuthMode::Jwt => verified.is_some(),
            AuthMode::Mtls => peer_id.is_some(),
            AuthMode::JwtAndMtls => verified.is_some() && peer_id.is_some(),
        });
        if !satisfied {
            return Err(self.missing(verified.is_some(), req.peer));
        }

        let mut who = Authenticated {
            caller: None,
            principals: Vec::new(),
            claims: None,
        };
        if let Some(id) = peer_id {
            sink.add("x-auth-peer", checked(id)?);
        }
        if let (Some(v), Some(t), Some(k)) = (&verified, token, keys.as_deref()) {
            if let Some(key) = k.get(&v.kid) {
                key.usage.record(now);
            }
            who.claims = v.claims_map.clone();
            self.identity_headers(&v.claims, payload_segment(t), who.claims.as_deref(), sink)?;
            if self.contexts.is_some() {
                who.caller = v.claims.sub.as_ref().map(|sub| Caller {
                    subject: sub.clone(),
                    roles: v.claims.roles.clone(),
                });
            }
        }
        if !self.policy.is_empty() {
            who.principals.extend(peer_id.map(str::to_string));
            who.principals
                .extend(verified.as_ref().and_then(|v| v.claims.sub.clone()));
        }
        Ok(who)
    }

    /// A verified token's claims: from the cache, or verified now (and then remembered).
    fn establish(&self, token: &str, keys: &KeySet, now: u64) -> Result<Established, Rejection> {
        if let Some(hit) = self.cache.get(token, keys, now) {
            return Ok(hit);
        }
        let v = self
            .verifier
            .verify(token, keys, now)
            .map_err(Rejection::InvalidToken)?;
        // The whole claim set is parsed once, and only when rules or claim headers need it.
        let claims_map = (!self.policy.is_empty() || !self.claim_headers.is_empty())
            .then(|| Arc::new(v.claims_map()));
        let expires = v.claims.exp + self.verifier.leeway as f64;
        let established = Established {
            kid: v.key.kid.as_str().into(),
            claims: Arc::new(v.claims),
            claims_map,
        };
        self.cache.put(token, keys, expires, &established);
        Ok(established)
    }

    /// Applies the rules to an authenticated request; a dry run only logs and counts.
    fn authorize(&self, req: &Inbound<'_>, who: &Authenticated) -> Result<&'static str, Rejection> {
        if self.policy.is_empty() {
            return Ok("verified");
        }
        let principals: Vec<&str> = who.principals.iter().map(String::as_str).collect();
        let facts = RequestFacts {
            method: req.method,
            path: req.path,
            principals: &principals,
            claims: who.claims.as_deref(),
        };
        let decision = self.policy.evaluate(&facts);
        let Some(denial) = decision.denial() else {
            return Ok("verified");
        };
        let rule = denial.to_string();
        let dry_run = decision.is_allowed();
        self.metrics.policy_denied(&rule, dry_run);
        if dry_run {
            tracing::info!(policy = self.policy.name(), %rule, reason = denial.reason_code(),
                method = req.method, path = req.path, "request would be denied (dry run)");
            return Ok("dry_run");
        }
        let (policy, reason) = (self.policy.name(), denial.reason_code());
        tracing::info!(policy, %rule, reason, "policy denial");
        Err(Rejection::Forbidden {
            policy: self.policy.name().to_string(),
        })
    }

    /// What is missing when no mode was satisfied.
    fn missing(&self, have_token: bool, peer: Option<&PeerIdentity>) -> Rejection {
        let cert_would_help = self.auth.iter().any(|m| match m {
            AuthMode::Mtls => true,
            AuthMode::JwtAndMtls => have_token,
            AuthMode::Jwt => false,
        });
        if !cert_would_help {
            return Rejection::MissingCredentials;
        }
        match peer {
            Some(PeerIdentity::Unusable(why)) => Rejection::NoClientCertificate(why),
            _ if have_token => {
                Rejection::NoClientCertificate("a verified client certificate is also required")
            }
            _ => Rejection::NoClientCertificate(
                "a bearer token or a verified client certificate is required",
            ),
        }
    }

    /// The headers the app receives for a verified token.
    fn identity_headers(
        &self,
        verified: &Claims,
        payload_b64: &str,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
        sink: &mut impl HeaderSink,
    ) -> Result<(), Rejection> {
        if let Some(sub) = &verified.sub {
            sink.add("x-auth-subject", checked(sub)?);
        }
        sink.add("x-auth-issuer", checked(&verified.iss)?);
        if !verified.roles.is_empty() {
            sink.add("x-auth-roles", checked(&verified.roles.join(","))?);
        }
        if let Some(actor) = &verified.actor {
            sink.add("x-auth-actor", checked(actor)?);
        }
        // The payload is base64url (checked by the verifier): always a valid header value.
        sink.add("x-auth-claims", payload_b64);
        if let Some(claims) = claims {
            for (claim, header) in &self.claim_headers {
                if let Some(value) = claims.get(claim).and_then(claim_text) {
                    sink.add(header.as_str(), checked(&value)?);
                }
            }
        }
        Ok(())
    }
}

/// The payload segment of a token that verified (so it has exactly two dots).
fn payload_segment(token: &str) -> &str {
    match (token.find('.'), token.rfind('.')) {
        (Some(a), Some(b)) if a < b => &token[a + 1..b],
        _ => "",
    }
}

/// Whether `value` can travel as a header value unchanged: visible ASCII, space, tab and
/// bytes above 0x7f, as the `http` crate accepts; never CR, LF or other control bytes.
pub fn header_value_ok(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A claim as a header value; a claim that cannot travel in a header makes the token unusable.
fn checked(value: &str) -> Result<&str, Rejection> {
    if header_value_ok(value.as_bytes()) {
        Ok(value)
    } else {
        Err(Rejection::InvalidToken(TokenError::Malformed(
            "a claim cannot be passed on as a header",
        )))
    }
}

/// A claim value as header text: strings as they are, arrays of scalars comma-joined, anything
/// else as compact JSON.
fn claim_text(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => Some(
            items
                .iter()
                .filter_map(claim_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_refuse_control_bytes() {
        assert!(header_value_ok(b"alice"));
        assert!(header_value_ok(b"a b\tc \xc3\xa9"));
        assert!(!header_value_ok(b"a\r\nx-auth-subject: admin"));
        assert!(!header_value_ok(b"a\x00"));
        assert!(!header_value_ok(b"a\x7f"));
    }

    #[test]
    fn claim_text_joins_scalar_arrays() {
        let v = serde_json::json!(["a", 1, true]);
        assert_eq!(claim_text(&v).as_deref(), Some("a,1,true"));
        assert_eq!(claim_text(&serde_json::Value::Null), None);
        let v = serde_json::json!({"k": [1]});
        assert_eq!(claim_text(&v).as_deref(), Some("{\"k\":[1]}"));
    }
}
