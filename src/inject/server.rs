//! The webhook's HTTPS endpoint: `POST /mutate` and `POST /mutate/enabled-namespace` answer
//! `AdmissionReview` v1 documents, `GET /healthz` answers the kubelet.
//!
//! The handler only decodes the review, calls [`mutate()`] and encodes its answer; a body that is
//! not a v1 `AdmissionReview` gets `400` with an `AdmissionReview` whose response explains why
//! (there is no `uid` to answer to, so the API server applies the webhook's `failurePolicy`).
//! TLS runs on pingora with the serving certificate from [`crate::tls`], reloaded when the
//! mounted Secret changes, so cert-manager can rotate it under a running webhook.

use async_trait::async_trait;
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use http::{Method, Response, StatusCode, header};
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use serde_json::Value;

use pingora::listeners::tls::TlsSettings;

use super::args::{InjectArgs, InvalidFlag};
use super::mutate::{Outcome, Route, Verdict, mutate};
use super::settings::InjectSettings;
use crate::tls::{Callbacks, ClientAuth, PeerIdentityKind, ServerTls, ServerTlsSettings, TlsError};

/// The annotation route: the pod must carry `portcullis.dev/inject: "true"`.
pub const MUTATE_PATH: &str = "/mutate";
/// The namespace route: the namespace is labelled `portcullis.dev/injection: enabled`.
pub const ENABLED_NAMESPACE_PATH: &str = "/mutate/enabled-namespace";
/// The API server sends at most a few MiB (object and old object); anything larger is refused.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The only review version this webhook speaks (`admissionReviewVersions: ["v1"]`).
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Flag(#[from] InvalidFlag),
    #[error("serving certificate: {0}")]
    Certs(#[from] TlsError),
    #[error("tls set-up: {0}")]
    Tls(String),
    #[error("--listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the webhook until SIGTERM (graceful) or SIGINT. Blocks the calling thread.
pub fn run(args: InjectArgs) -> Result<(), StartError> {
    let settings = args.settings()?;
    let tls = ServerTls::load(ServerTlsSettings {
        cert_file: args.tls_cert.clone(),
        key_file: args.tls_key.clone(),
        client_ca_file: None,
        client_auth: ClientAuth::Off,
        peer_identity: PeerIdentityKind::Spiffe,
    })?;
    tls.watch(std::time::Duration::from_secs(30));

    // pingora binds later and aborts on failure; a trial bind gives a message naming the flag.
    std::net::TcpListener::bind(args.listen).map_err(|source| StartError::Listen {
        addr: args.listen,
        source,
    })?;

    let conf = ServerConf {
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut service = Service::new("portcullis inject".to_string(), AdmissionApp::new(settings));
    let tls = TlsSettings::with_callbacks(Box::new(Callbacks(tls)))
        .map_err(|e| StartError::Tls(e.to_string()))?;
    service.add_tls_with_settings(&args.listen.to_string(), None, tls);
    server.add_service(service);

    tracing::info!(listen = %args.listen, "admission webhook listening");
    server.run(RunArgs::default());
    tracing::info!("admission webhook stopped");
    Ok(())
}

/// The HTTP application behind the TLS listener.
#[derive(Debug)]
pub struct AdmissionApp {
    settings: InjectSettings,
}

impl AdmissionApp {
    pub fn new(settings: InjectSettings) -> Self {
        Self { settings }
    }

    /// Decodes one review body, decides, and encodes the answer.
    pub fn review(&self, body: &[u8], route: Route) -> Response<Vec<u8>> {
        let request = match decode(body) {
            Ok(request) => request,
            Err(reason) => {
                tracing::warn!(%reason, "malformed admission review");
                return json(
                    StatusCode::BAD_REQUEST,
                    &AdmissionResponse::invalid(reason).into_review(),
                );
            }
        };
        let verdict = mutate(&request, route, &self.settings);
        log(&request, &verdict);
        match encode(verdict.response) {
            Ok(review) => json(StatusCode::OK, &review),
            Err(error) => {
                tracing::error!(%error, "cannot encode the admission response");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the response\n",
                )
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdmissionApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if path == "/healthz" {
            return match method {
                Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
            };
        }
        let route = match path.as_str() {
            MUTATE_PATH => Route::PodAnnotation,
            ENABLED_NAMESPACE_PATH => Route::EnabledNamespace,
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        if method != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }

        match read_body(session).await {
            Ok(body) => self.review(&body, route),
            Err(status) => text(status, "cannot read the request body\n"),
        }
    }
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`].
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, StatusCode> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(StatusCode::PAYLOAD_TOO_LARGE);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                tracing::debug!(%error, "cannot read admission review body");
                return Err(StatusCode::BAD_REQUEST);
            }
        }
    }
}

/// A v1 `AdmissionReview` with a request, or a reason to give back.
fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|error| format!("not an AdmissionReview: {error}"))?;
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "unsupported review {}/{}: only {REVIEW_API_VERSION} AdmissionReview",
            review.types.api_version, review.types.kind
        ));
    }
    review
        .try_into()
        .map_err(|_| "the AdmissionReview carries no request".to_string())
}

/// The response as the API server reads it. `patch` is a Go `[]byte`, which JSON carries as a
/// base64 string (admission.k8s.io/v1 reference); kube-core serialises the bytes as a number
/// array instead (kube-rs issue #1781), so it is re-encoded here.
fn encode(response: AdmissionResponse) -> Result<Value, serde_json::Error> {
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review())?;
    if let (Some(bytes), Some(slot)) = (patch, review.pointer_mut("/response/patch")) {
        *slot = Value::from(BASE64_STANDARD.encode(bytes));
    }
    Ok(review)
}

fn log(request: &AdmissionRequest<DynamicObject>, verdict: &Verdict) {
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let pod = pod_name(request);
    let (uid, dry_run) = (request.uid.as_str(), request.dry_run);
    match &verdict.outcome {
        Outcome::Injected { identity, mode } => tracing::info!(
            uid, namespace, pod, %identity, %mode, dry_run, "sidecar injected"
        ),
        Outcome::Skipped(reason) => {
            tracing::debug!(uid, namespace, pod, ?reason, dry_run, "pod left unchanged")
        }
        Outcome::Denied(error) => {
            tracing::warn!(uid, namespace, pod, %error, dry_run, "pod denied, cannot inject")
        }
        Outcome::AdmittedUninjected(error) => tracing::warn!(
            uid, namespace, pod, %error, dry_run, "pod admitted WITHOUT sidecar (unsafe fail-open)"
        ),
    }
}

/// The pod's name, or its `generateName` prefix for pods a controller creates.
fn pod_name(request: &AdmissionRequest<DynamicObject>) -> &str {
    if !request.name.is_empty() {
        return &request.name;
    }
    let metadata = request.object.as_ref().map(|o| &o.metadata);
    metadata
        .and_then(|m| m.name.as_deref().or(m.generate_name.as_deref()))
        .unwrap_or_default()
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Vec<u8>> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(error) => {
            tracing::error!(%error, "cannot encode the admission response");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the response\n",
            )
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(Vec::new());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(body.len()),
    );
    *response.body_mut() = body;
    response
}
