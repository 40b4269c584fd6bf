//! The inbound proxy on pingora's `ProxyHttp`: the engine behind the TLS listener.
//!
//! For each request, in order: strip identity headers ([`crate::auth`]); normalise the path;
//! then [`Pipeline::decide`] (public routes, the bearer token, client certificates, rules);
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
use crate::auth::{self, Authorization};
use crate::config::Settings;
use crate::context::CONTEXT_HEADER;
use crate::pipeline::{HeaderSink, Inbound, Pipeline};
use crate::rules::normalize_path;
use crate::tls::PeerIdentity;

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

impl InFlight {
    /// Counts one more request in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
}

/// The inbound sidecar on pingora: the engine for the TLS listener.
pub struct Sidecar {
    upstream: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pipeline: Arc<Pipeline>,
    in_flight: Arc<InFlight>,
}

/// Identity headers collected for pingora's request header.
struct Collected(Vec<(HeaderName, HeaderValue)>);

impl HeaderSink for Collected {
    fn add(&mut self, name: &str, value: &str) {
        // The pipeline checked the value; a name is one of ours or a configured header name.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.0.push((n, v));
        }
    }
}

impl Sidecar {
    pub fn new(settings: &Settings, pipeline: Arc<Pipeline>, in_flight: Arc<InFlight>) -> Self {
        Self {
            upstream: settings.upstream,
            connect_timeout: settings.upstream_connect_timeout,
            idle_timeout: settings.upstream_idle_timeout,
            pipeline,
            in_flight,
        }
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        rejection: Rejection,
    ) -> Result<bool> {
        ctx.reason = rejection.reason();
        let req = session.req_header();
        let answer = self.pipeline.refuse(
            &rejection,
            req.method.as_str(),
            req.uri.path(),
            &client(session),
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
        Ctx {
            start: Instant::now(),
            reason: "",
            context: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Step 1, always first: nothing a caller sends can pass for an identity header.
        auth::strip_identity_headers(session.req_header_mut(), &self.pipeline.claim_header_names);

        // Step 2: one safe normal form of the path for public routes, rules and the app alike.
        if let Err(error) = normalize_request_path(session.req_header_mut()) {
            tracing::info!(%error, "request path refused");
            return self.refuse(session, ctx, Rejection::BadPath).await;
        }
        let req = session.req_header();
        let inbound = Inbound {
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query(),
            authorization: Authorization::from_headers(&req.headers),
            head_bytes: head_size(req),
            peer: peer_identity(session),
        };
        let mut headers = Collected(Vec::with_capacity(6));
        let allowed = match self.pipeline.decide(&inbound, &mut headers) {
            Ok(allowed) => allowed,
            Err(rejection) => return self.refuse(session, ctx, rejection).await,
        };

        // Recorded in the context at once, so that `logging` closes it whatever happens next.
        ctx.reason = allowed.reason;
        ctx.context = allowed.context;
        if allowed.reason == "public" {
            return Ok(false);
        }
        let req = session.req_header_mut();
        if !self.pipeline.forward_token {
            req.remove_header(&AUTHORIZATION);
        }
        for (name, value) in headers.0 {
            req.insert_header(name, value)?;
        }
        if let Some(handle) = &ctx.context {
            req.insert_header(CONTEXT_HEADER, handle.as_str())?;
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
        self.pipeline
            .finish(ctx.reason, ctx.context.as_deref(), ctx.start);
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
