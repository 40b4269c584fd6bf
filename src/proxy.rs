//! The inbound proxy: pingora's `ProxyHttp`, hosting the pipeline of DESIGN.md.
//!
//! For each request, in order: strip identity headers ([`crate::auth`]); refuse an oversized
//! head; let public routes pass; find the bearer token and verify it ([`crate::verify`]);
//! answer a refusal ([`crate::answer`]) or add the identity headers and forward to the app.
//! Everything else about the request (method, path, query, body, other headers, streaming,
//! keep-alive, upgrades) is pingora's plain proxying and reaches the app unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::answer::{Rejection, json_body};
use crate::auth;
use crate::config::{AuthMode, PublicPath, Settings};
use crate::context::{CONTEXT_HEADER, Caller, ContextStore};
use crate::keys::{KeyStore, now_unix};
use crate::metrics::Metrics;
use crate::rules::{Policy, RequestFacts, normalize_path};
use crate::tls::PeerIdentity;
use crate::verify::{Verified, Verifier};

/// Counts requests in flight so that shutdown can wait for them.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Decrements [`InFlight`] when a request's context is dropped, whatever path it took.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    reason: &'static str,
    /// The context handle handed to the app, closed when the request ends.
    context: Option<String>,
    _in_flight: InFlightGuard,
}

/// The inbound sidecar.
pub struct Sidecar {
    identity: String,
    upstream: SocketAddr,
    public_paths: Vec<PublicPath>,
    verifier: Verifier,
    forward_token: bool,
    max_header_bytes: usize,
    claim_headers: Vec<(String, HeaderName)>,
    claim_header_names: Vec<HeaderName>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    auth: Vec<AuthMode>,
    policy: Policy,
    keys: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    in_flight: Arc<InFlight>,
    /// Present when the egress side runs: verified users get a context handle.
    contexts: Option<Arc<ContextStore>>,
}

/// Who a request is from, once authenticated.
struct Authenticated {
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The token's subject, for on-behalf-of calls.
    caller: Option<Caller>,
    /// The mTLS peer identity and the token subject: what rules call principals.
    principals: Vec<String>,
    /// The verified claim set, parsed only when the rules need it.
    claims: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Sidecar {
    pub fn new(
        settings: &Settings,
        keys: Arc<KeyStore>,
        metrics: Arc<Metrics>,
        in_flight: Arc<InFlight>,
        contexts: Option<Arc<ContextStore>>,
    ) -> Self {
        Self {
            identity: settings.identity.clone(),
            upstream: settings.upstream,
            public_paths: settings.public_paths.clone(),
            verifier: Verifier {
                identity: settings.identity.clone(),
                issuers: settings.issuers.clone(),
                leeway: settings.leeway,
                max_token_bytes: settings.max_token_bytes,
            },
            forward_token: settings.forward_token,
            max_header_bytes: settings.max_header_bytes,
            claim_headers: settings.claim_headers.clone(),
            claim_header_names: settings
                .claim_headers
                .iter()
                .map(|(_, h)| h.clone())
                .collect(),
            connect_timeout: settings.upstream_connect_timeout,
            idle_timeout: settings.upstream_idle_timeout,
            auth: settings.auth.clone(),
            policy: settings.policy.clone(),
            keys,
            metrics,
            in_flight,
            contexts,
        }
    }

    /// Authenticates the request by the configured modes; on success returns who called.
    fn authenticate(&self, session: &Session) -> Result<Authenticated, Rejection> {
        let req = session.req_header();
        if head_size(req) > self.max_header_bytes {
            return Err(Rejection::HeadTooLarge);
        }
        let peer = peer_identity(session);
        let token = match auth::bearer_token(&req.headers, &req.uri) {
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
            (Some(t), Some(k)) => Some(
                self.verifier
                    .verify(t, k, now)
                    .map_err(Rejection::InvalidToken)?,
            ),
            _ => None,
        };
        let peer_id = match peer {
            Some(PeerIdentity::Verified(id)) => Some(id.as_str()),
            _ => None,
        };
        let satisfied = self.auth.iter().any(|mode| match mode {
            AuthMode::Jwt => verified.is_some(),
            AuthMode::Mtls => peer_id.is_some(),
            AuthMode::JwtAndMtls => verified.is_some() && peer_id.is_some(),
        });
        if !satisfied {
            return Err(self.missing(verified.is_some(), peer));
        }

        let mut who = Authenticated {
            headers: Vec::with_capacity(6),
            caller: None,
            principals: Vec::new(),
            claims: None,
        };
        if let Some(id) = peer_id {
            who.headers
                .push((HeaderName::from_static("x-auth-peer"), header_value(id)?));
        }
        if let Some(v) = &verified {
            v.key.usage.record(now);
            // The whole claim set is parsed once, and only when rules or claim headers need it.
            if !self.policy.is_empty() || !self.claim_headers.is_empty() {
                who.claims = Some(v.claims_map());
            }
            self.identity_headers(v, who.claims.as_ref(), &mut who.headers)?;
            who.caller = v.claims.sub.as_ref().map(|sub| Caller {
                subject: sub.clone(),
                roles: v.claims.roles.clone(),
            });
        }
        if !self.policy.is_empty() {
            who.principals.extend(peer_id.map(str::to_string));
            who.principals
                .extend(verified.as_ref().and_then(|v| v.claims.sub.clone()));
        }
        Ok(who)
    }

    /// Applies the rules to an authenticated request; a dry run only logs and counts.
    fn authorize(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        who: &Authenticated,
    ) -> Result<(), Rejection> {
        if self.policy.is_empty() {
            return Ok(());
        }
        let req = session.req_header();
        let principals: Vec<&str> = who.principals.iter().map(String::as_str).collect();
        let facts = RequestFacts {
            method: req.method.as_str(),
            path: req.uri.path(),
            principals: &principals,
            claims: who.claims.as_ref(),
        };
        let decision = self.policy.evaluate(&facts);
        let Some(denial) = decision.denial() else {
            return Ok(());
        };
        let rule = denial.to_string();
        let dry_run = decision.is_allowed();
        self.metrics.policy_denied(&rule, dry_run);
        if dry_run {
            tracing::info!(policy = self.policy.name(), %rule, reason = denial.reason_code(),
                method = %req.method, path = %req.uri.path(), "request would be denied (dry run)");
            ctx.reason = "dry_run";
            return Ok(());
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
        v: &Verified<'_>,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
        out: &mut Vec<(HeaderName, HeaderValue)>,
    ) -> Result<(), Rejection> {
        if let Some(sub) = &v.claims.sub {
            out.push((
                HeaderName::from_static("x-auth-subject"),
                header_value(sub)?,
            ));
        }
        out.push((
            HeaderName::from_static("x-auth-issuer"),
            header_value(&v.claims.iss)?,
        ));
        if !v.claims.roles.is_empty() {
            out.push((
                HeaderName::from_static("x-auth-roles"),
                header_value(&v.claims.roles.join(","))?,
            ));
        }
        if let Some(actor) = &v.claims.actor {
            out.push((
                HeaderName::from_static("x-auth-actor"),
                header_value(actor)?,
            ));
        }
        out.push((
            HeaderName::from_static("x-auth-claims"),
            header_value(v.payload_b64)?,
        ));
        if let Some(claims) = claims {
            for (claim, header) in &self.claim_headers {
                if let Some(value) = claims.get(claim).and_then(claim_text) {
                    out.push((header.clone(), header_value(&value)?));
                }
            }
        }
        Ok(())
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        rejection: Rejection,
    ) -> Result<bool> {
        ctx.reason = rejection.reason();
        let answer = rejection.answer(&self.identity);
        let req = session.req_header();
        tracing::info!(
            reason = ctx.reason,
            status = answer.status,
            method = %req.method,
            path = %req.uri.path(),
            client = %client(session),
            "request denied"
        );
        let mut resp = ResponseHeader::build(answer.status, Some(4))?;
        if let Some(challenge) = &answer.www_authenticate {
            resp.insert_header(WWW_AUTHENTICATE, challenge)?;
        }
        resp.insert_header(CONTENT_TYPE, "application/json")?;
        resp.insert_header(CONTENT_LENGTH, answer.body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(answer.body), true).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Sidecar {
    type CTX = Ctx;

    /// No downstream modules: the sidecar never compresses, and each module costs per request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        self.in_flight.0.fetch_add(1, Ordering::AcqRel);
        Ctx {
            start: Instant::now(),
            reason: "",
            context: None,
            _in_flight: InFlightGuard(self.in_flight.clone()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Step 1, always first: nothing a caller sends can pass for an identity header.
        auth::strip_identity_headers(session.req_header_mut(), &self.claim_header_names);

        // Step 2: one safe normal form of the path for public routes, rules and the app alike.
        if let Err(error) = normalize_request_path(session.req_header_mut()) {
            tracing::info!(%error, "request path refused");
            return self.refuse(session, ctx, Rejection::BadPath).await;
        }
        let req = session.req_header();
        if auth::is_public(&self.public_paths, req.method.as_str(), &req.uri) {
            ctx.reason = "public";
            return Ok(false);
        }

        let who = match self.authenticate(session) {
            Ok(who) => who,
            Err(rejection) => return self.refuse(session, ctx, rejection).await,
        };
        if let Err(rejection) = self.authorize(session, ctx, &who) {
            return self.refuse(session, ctx, rejection).await;
        }

        // Step 6: hand the app the verified caller.
        // Recorded in the context at once, so that `logging` closes it whatever happens next.
        ctx.context = match (&self.contexts, who.caller) {
            (Some(store), Some(caller)) => store.open(caller),
            _ => None,
        };
        let req = session.req_header_mut();
        if !self.forward_token {
            req.remove_header(&AUTHORIZATION);
        }
        for (name, value) in who.headers {
            req.insert_header(name, value)?;
        }
        if let Some(handle) = &ctx.context {
            req.insert_header(CONTEXT_HEADER, handle.as_str())?;
        }
        if ctx.reason.is_empty() {
            ctx.reason = "verified";
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code == 502 {
            tracing::warn!(upstream = %self.upstream, error = %e, "upstream unavailable");
        }
        if code > 0 {
            let body = match code {
                502 => json_body("bad_gateway", "the app behind the sidecar is unreachable"),
                400 => json_body("bad_request", "malformed request"),
                _ => json_body(
                    "internal_error",
                    "the sidecar could not complete the request",
                ),
            };
            if let Err(error) = session.respond_error_with_body(code, body).await {
                tracing::debug!(%error, "cannot send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if let (Some(store), Some(handle)) = (&self.contexts, &ctx.context) {
            store.close(handle);
        }
        if !ctx.reason.is_empty() {
            self.metrics.decided(ctx.reason);
        }
        self.metrics
            .duration
            .observe(ctx.start.elapsed().as_secs_f64());
    }
}

/// Size of the request line and headers as received (approximately: names, values, separators).
fn head_size(req: &RequestHeader) -> usize {
    let target = req
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().len())
        .unwrap_or(1);
    let line = req.method.as_str().len() + target + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
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

/// A claim as a header value; a claim that cannot travel in a header makes the token unusable.
fn header_value(s: &str) -> Result<HeaderValue, Rejection> {
    HeaderValue::from_bytes(s.as_bytes()).map_err(|_| {
        Rejection::InvalidToken(crate::verify::TokenError::Malformed(
            "a claim cannot be passed on as a header",
        ))
    })
}

/// Rewrites the request path to its normal form (query kept); errors if it has none.
fn normalize_request_path(
    req: &mut RequestHeader,
) -> std::result::Result<(), crate::rules::PathError> {
    let normal = match normalize_path(req.uri.path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(normal) => normal,
    };
    let target = match req.uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    if let Ok(uri) = target.parse() {
        req.set_uri(uri);
    }
    Ok(())
}

/// The identity the TLS handshake attached to this connection, if any.
fn peer_identity(session: &Session) -> Option<&PeerIdentity> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<PeerIdentity>()
}

fn client(session: &Session) -> String {
    session
        .client_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}
