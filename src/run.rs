//! Assembling and running the sidecar: keys, watcher, proxy, admin listener, shutdown.
//!
//! pingora owns the process once [`serve`] starts it. SIGTERM makes it stop accepting; a
//! watcher thread then waits for in-flight requests to finish (up to the shutdown timeout) and
//! exits 0, so a drained sidecar does not sit out pingora's whole grace period.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, Server};
use pingora::services::listening::Service;

use pingora::listeners::tls::TlsSettings;

use crate::admin::Admin;
use crate::config::Settings;
use crate::context::ContextStore;
use crate::egress::{Egress, EgressSettings};
use crate::forward::Forwarder;
use crate::keys::{self, KeyStore};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::proxy::{InFlight, Sidecar};
use crate::tls::{ServerTls, UpstreamTls};
use crate::watch::{self, WatchOptions};

/// Loads the keys once and keeps them fresh from the directory.
pub fn start_key_store(settings: &Settings) -> Arc<KeyStore> {
    let store = Arc::new(KeyStore::new(settings.keys_dir.clone()));
    let outcome = store.reload();
    keys::log_outcome(&store, &outcome);
    let watched = store.clone();
    let options = WatchOptions {
        rescan: settings.rescan_interval,
        ..WatchOptions::default()
    };
    watch::spawn(
        "keys",
        vec![settings.keys_dir.clone()],
        options,
        move || {
            let outcome = watched.reload();
            keys::log_outcome(&watched, &outcome);
        },
    );
    store
}

/// Builds the pingora server for these settings; `serve` runs it.
pub fn build(settings: &Settings, keys: Arc<KeyStore>) -> anyhow::Result<Built> {
    let metrics = Metrics::new()?;
    let in_flight = Arc::new(InFlight::default());
    let server_tls = start_server_tls(settings)?;
    let contexts = settings
        .egress
        .as_ref()
        .map(|e| Arc::new(ContextStore::new(e.context_grace)));

    let conf = ServerConf {
        threads: settings.threads,
        work_stealing: settings.threads > 1,
        upstream_keepalive_pool_size: settings.upstream_pool_size,
        grace_period_seconds: Some(settings.shutdown_timeout.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let pipeline = Arc::new(Pipeline::new(
        settings,
        keys.clone(),
        metrics.clone(),
        contexts.clone(),
    ));
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    match &server_tls {
        // TLS (and so mTLS) is served by pingora, whose OpenSSL callbacks choose the
        // certificate per handshake and read the peer's.
        Some(tls) => {
            let sidecar = Sidecar::new(settings, pipeline, in_flight.clone());
            let mut proxy = pingora::proxy::http_proxy_service_with_name(
                &server.configuration,
                sidecar,
                "inbound",
            );
            let callbacks = Box::new(crate::tls::Callbacks(tls.clone()));
            let tls_settings = TlsSettings::with_callbacks(callbacks)?;
            proxy.add_tls_with_settings(&settings.listen.to_string(), None, tls_settings);
            server.add_service(proxy);
        }
        // Plain HTTP: the lean forwarder.
        None => {
            let listener = std::net::TcpListener::bind(settings.listen).map_err(|e| {
                anyhow::anyhow!(
                    "--listen {}: cannot listen ({e}); choose a free address",
                    settings.listen
                )
            })?;
            let forwarder = Arc::new(Forwarder::new(settings, pipeline, in_flight.clone()));
            forwarder.start(listener, settings.threads, shutdown_rx)?;
        }
    }

    if let (Some(egress), Some(contexts)) = (&settings.egress, contexts) {
        let route_tls = egress_tls(egress, server_tls.as_ref())?;
        let outbound = Egress::new(
            settings.identity.clone(),
            egress.clone(),
            route_tls,
            keys.clone(),
            contexts,
        );
        let mut service =
            pingora::proxy::http_proxy_service_with_name(&server.configuration, outbound, "egress");
        service.add_tcp(&egress.listen.to_string());
        server.add_service(service);
        let routes = egress.routes.len();
        tracing::info!(listen = %egress.listen, routes, "egress listener enabled");
    }

    let admin = Admin {
        keys,
        metrics,
        upstream: settings.upstream,
        listen: settings.listen,
        tls: server_tls.clone(),
    };
    let mut admin = Service::new("admin".to_string(), admin);
    admin.add_tcp(&settings.admin_listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);
    Ok(Built {
        server,
        in_flight,
        shutdown,
    })
}

/// A sidecar ready to run: the pingora server (admin, TLS listener, egress), the requests in
/// flight, and the switch that stops the plain-HTTP forwarder accepting.
pub struct Built {
    pub server: Server,
    pub in_flight: Arc<InFlight>,
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

/// Loads the inbound certificate (fatal if unusable at start) and keeps it fresh.
fn start_server_tls(settings: &Settings) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let Some(tls) = &settings.tls else {
        return Ok(None);
    };
    let loaded =
        ServerTls::load(tls.clone()).map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
    loaded.watch(settings.rescan_interval);
    tracing::info!(cert = %tls.cert_file.display(), client_auth = ?tls.client_auth, "tls enabled");
    Ok(Some(loaded))
}

/// Per-route TLS: the CA bundle to trust and, where asked, this sidecar's own certificate.
fn egress_tls(
    egress: &EgressSettings,
    own: Option<&Arc<ServerTls>>,
) -> anyhow::Result<Vec<Option<UpstreamTls>>> {
    egress
        .routes
        .iter()
        .map(|route| {
            let Some(tls) = &route.tls else {
                return Ok(None);
            };
            let ca = crate::tls::read_certs(&tls.ca_file)
                .map_err(|e| anyhow::anyhow!("egress route {:?}: tls.ca_file: {e}", route.name))?;
            let client = match (tls.client_certificate, own) {
                (true, Some(own)) => Some(own.clone()),
                (true, None) => anyhow::bail!(
                    "egress route {:?}: tls.client_certificate needs the sidecar's own \
                     certificate; \
                     set --tls-cert and --tls-key, or client_certificate: false",
                    route.name
                ),
                (false, _) => None,
            };
            Ok(Some(UpstreamTls {
                server_name: tls.server_name.clone(),
                ca: Arc::new(ca.into_boxed_slice()),
                client,
            }))
        })
        .collect()
}

/// Runs the server until SIGTERM (graceful) or SIGINT (immediate). Never returns.
pub fn serve(built: Built, shutdown_timeout: Duration) -> ! {
    let Built {
        server,
        in_flight,
        shutdown,
    } = built;
    let phases = server.watch_execution_phase();
    thread::Builder::new()
        .name("drain".into())
        .spawn(move || drain_then_exit(phases, in_flight, shutdown, shutdown_timeout))
        .ok();
    server.run_forever()
}

/// After SIGTERM, exits as soon as no request is in flight, or when the timeout ends.
fn drain_then_exit(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    in_flight: Arc<InFlight>,
    forwarder: tokio::sync::watch::Sender<bool>,
    timeout: Duration,
) {
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::GracefulTerminate) => break,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
    tracing::info!(
        in_flight = in_flight.count(),
        "shutting down, draining requests"
    );
    // The forwarder stops accepting and closes idle connections; pingora's services stop
    // on their own.
    forwarder.send_replace(true);
    let deadline = Instant::now() + timeout;
    // Let the listeners see the shutdown before counting.
    thread::sleep(Duration::from_millis(50));
    while in_flight.count() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left = in_flight.count();
    if left > 0 {
        tracing::warn!(left, "shutdown timeout reached with requests in flight");
    } else {
        tracing::info!("drained, exiting");
    }
    std::process::exit(0);
}

/// `portcullis run`: the whole sidecar.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(
        identity = %settings.identity,
        listen = %settings.listen,
        upstream = %settings.upstream,
        admin = %settings.admin_listen,
        keys_dir = %settings.keys_dir.display(),
        "starting portcullis"
    );
    check_addresses(&settings)?;
    let keys = start_key_store(&settings);
    let built = build(&settings, keys)?;
    serve(built, settings.shutdown_timeout)
}

/// pingora retries a busy address quietly; a trial bind says at once which flag to change.
fn check_addresses(settings: &Settings) -> anyhow::Result<()> {
    let egress = settings
        .egress
        .as_ref()
        .map(|e| ("--egress-listen", e.listen));
    let addresses = [
        ("--listen", settings.listen),
        ("--admin-listen", settings.admin_listen),
    ];
    for (flag, addr) in addresses.into_iter().chain(egress) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            anyhow::bail!("{flag} {addr}: cannot listen ({e}); choose a free address");
        }
    }
    Ok(())
}
