//! The outbound listener (the ambassador): the app calls `http://127.0.0.1:15001` with the
//! target as `Host` (or a path prefix); portcullis finds the route, mints a fresh short-lived
//! HS256 token for the target's audience, and forwards, over TLS with this sidecar's own client
//! certificate where the route says so.
//!
//! With an `x-portcullis-context` handle from an inbound user request, the token carries the
//! user as `sub`, their `roles`, and this service as `act.sub` (RFC 8693); without one it is the
//! service's own token. A bad handle or an unknown target is refused with a clear answer, never
//! sent on unauthenticated.

pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::context::{CONTEXT_HEADER, Caller, ContextStore};
use crate::keys::{KeyStore, now_unix};
use crate::mint::{MintRequest, mint};
use crate::tls::UpstreamTls;
pub use routes::{EgressSettings, Route};

/// Per-request state: the index of the matched route.
#[derive(Default)]
pub struct EgressCtx {
    route: Option<usize>,
}

pub struct Egress {
    identity: String,
    settings: EgressSettings,
    /// TLS material per route (same order as `settings.routes`).
    tls: Vec<Option<UpstreamTls>>,
    keys: Arc<KeyStore>,
    contexts: Arc<ContextStore>,
}

/// A refusal on the egress side: status, error code, description.
struct Refusal(u16, &'static str, String);

impl Egress {
    pub fn new(
        identity: String,
        settings: EgressSettings,
        tls: Vec<Option<UpstreamTls>>,
        keys: Arc<KeyStore>,
        contexts: Arc<ContextStore>,
    ) -> Self {
        Self {
            identity,
            settings,
            tls,
            keys,
            contexts,
        }
    }

    /// Picks the route and builds the token for this request.
    fn prepare(&self, session: &Session) -> Result<(usize, String), Refusal> {
        let req = session.req_header();
        let host = req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        let path = req.uri.path();
        let index = self.settings.find(host, path).ok_or_else(|| {
            Refusal(
                502,
                "no_route",
                format!(
                    "no egress route for host {:?} or path {path:?}",
                    host.unwrap_or("")
                ),
            )
        })?;
        let route = &self.settings.routes[index];

        let caller = match req.headers.get(CONTEXT_HEADER) {
            None => None,
            Some(value) => {
                let handle = value.to_str().unwrap_or("");
                let caller = self
                    .contexts
                    .lookup(handle)
                    .map_err(|e| Refusal(400, "invalid_context", e.to_string()))?;
                Some(caller)
            }
        };
        let keys = self
            .keys
            .current()
            .ok_or_else(|| Refusal(503, "no_keys", "no signing key is loaded".into()))?;
        let token = mint(
            keys.signing(),
            &self.mint_request(route, caller),
            now_unix(),
        )
        .map_err(|e| Refusal(500, "mint_failed", e.to_string()))?;
        Ok((index, token))
    }

    fn mint_request(&self, route: &Route, caller: Option<Caller>) -> MintRequest {
        let ttl = self.settings.token_ttl.as_secs() as i64;
        let base = MintRequest {
            issuer: self.identity.clone(),
            audiences: vec![route.audience.clone()],
            ttl,
            ..MintRequest::default()
        };
        match caller {
            Some(user) => MintRequest {
                subject: user.subject,
                roles: user.roles,
                actor: Some(self.identity.clone()),
                ..base
            },
            None => MintRequest {
                subject: self.identity.clone(),
                ..base
            },
        }
    }

    async fn refuse(&self, session: &mut Session, refusal: Refusal) -> Result<bool> {
        let Refusal(status, error, description) = refusal;
        let path = session.req_header().uri.path().to_string();
        tracing::warn!(status, error, %description, %path, "outbound request refused");
        let body = Bytes::from(
            serde_json::json!({ "error": error, "error_description": description }).to_string(),
        );
        let mut resp = ResponseHeader::build(status, Some(3))?;
        resp.insert_header(CONTENT_TYPE, "application/json")?;
        resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Egress {
    type CTX = EgressCtx;

    fn new_ctx(&self) -> EgressCtx {
        EgressCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut EgressCtx) -> Result<bool> {
        let (index, token) = match self.prepare(session) {
            Ok(prepared) => prepared,
            Err(refusal) => return self.refuse(session, refusal).await,
        };
        ctx.route = Some(index);
        let route = &self.settings.routes[index];

        let req = session.req_header_mut();
        req.remove_header(CONTEXT_HEADER);
        req.insert_header(AUTHORIZATION, format!("Bearer {token}"))?;
        if let routes::RouteMatch::PathPrefix {
            prefix,
            strip: true,
        } = &route.matcher
        {
            let rest = req
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            let rest = rest
                .strip_prefix(prefix.trim_end_matches('/'))
                .unwrap_or(rest);
            let rest = if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
            if let Ok(uri) = rest.parse() {
                req.set_uri(uri);
            }
        }
        tracing::debug!(route = %route.name, audience = %route.audience, "outbound token minted");
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut EgressCtx,
    ) -> Result<Box<HttpPeer>> {
        let index = ctx
            .route
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        let route = &self.settings.routes[index];
        let mut peer = match self.tls.get(index).and_then(Option::as_ref) {
            Some(tls) => tls.peer(route.upstream),
            None => HttpPeer::new(route.upstream, false, String::new()),
        };
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }
}
