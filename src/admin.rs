//! The admin listener: `/healthz`, `/startupz`, `/readyz` and `/metrics`.
//!
//! `/healthz` says the process is alive. `/startupz` says a usable key set is loaded and the
//! inbound listener accepts connections; a native sidecar's startup probe uses it, so the app
//! starts only once the sidecar can verify.
//! `/readyz` adds that the app itself accepts connections (it must not be the startup probe: the
//! app is not started until the sidecar's startup probe passes). Every "no" says why, in plain
//! text. `/metrics` is the Prometheus text format. Nothing here ever shows a key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// How long `/readyz` waits for the app to accept a connection.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Admin {
    pub keys: Arc<KeyStore>,
    pub metrics: Arc<Metrics>,
    pub upstream: SocketAddr,
    /// The inbound listener, checked so that "ready" never precedes "accepting".
    pub listen: SocketAddr,
    pub tls: Option<Arc<ServerTls>>,
}

impl Admin {
    fn keys_status(&self) -> Result<String, String> {
        match (self.keys.current(), self.keys.last_error()) {
            (Some(set), None) => Ok(format!("keys: {} loaded", set.len())),
            (Some(set), Some(e)) => Ok(format!(
                "keys: {} loaded; last update refused: {e}",
                set.len()
            )),
            (None, Some(e)) => Err(format!("keys: none loaded: {e}")),
            (None, None) => Err("keys: not loaded yet".to_string()),
        }
    }

    async fn listener_status(&self) -> Result<String, String> {
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        match tokio::time::timeout(UPSTREAM_PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => Ok(format!("listener: {} accepting", self.listen)),
            _ => Err(format!("listener: {} not accepting yet", self.listen)),
        }
    }

    async fn upstream_status(&self) -> Result<String, String> {
        let connect = tokio::net::TcpStream::connect(self.upstream);
        match tokio::time::timeout(UPSTREAM_PROBE_TIMEOUT, connect).await {
            Ok(Ok(_)) => Ok(format!("upstream: {} reachable", self.upstream)),
            Ok(Err(e)) => Err(format!("upstream: {} unreachable: {e}", self.upstream)),
            Err(_) => Err(format!(
                "upstream: {} did not accept within {UPSTREAM_PROBE_TIMEOUT:?}",
                self.upstream
            )),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => text(200, "ok\n".to_string()),
            "/startupz" => verdict(vec![self.keys_status(), self.listener_status().await]),
            "/readyz" => verdict(vec![
                self.keys_status(),
                self.listener_status().await,
                self.upstream_status().await,
            ]),
            "/metrics" => {
                let body = self.metrics.render(&self.keys, self.tls.as_deref());
                respond(200, "text/plain; version=0.0.4", body)
            }
            _ => text(
                404,
                "not found: try /healthz, /startupz, /readyz or /metrics\n".to_string(),
            ),
        }
    }
}

/// 200 when every check passed, else 503; the body lists each check's line.
fn verdict(checks: Vec<Result<String, String>>) -> Response<Vec<u8>> {
    let ok = checks.iter().all(Result::is_ok);
    let mut body: String = checks
        .into_iter()
        .map(|c| c.unwrap_or_else(|e| e) + "\n")
        .collect();
    body.insert_str(0, if ok { "ready\n" } else { "not ready\n" });
    text(if ok { 200 } else { 503 }, body)
}

fn text(status: u16, body: String) -> Response<Vec<u8>> {
    respond(status, "text/plain; charset=utf-8", body.into_bytes())
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let built = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body);
    // The status and header values above are constants or numbers, which always build.
    built.unwrap_or_else(|_| Response::new(Vec::new()))
}
