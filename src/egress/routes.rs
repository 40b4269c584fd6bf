//! The outbound route table: which target a request from the app is for, where that target
//! lives, and which audience a token for it must name.
//!
//! A route matches on the request's `Host` (port ignored) or on a path prefix. Routes come from
//! the YAML file only (`egress.routes`); this module validates them at start and answers
//! lookups. It does not mint or forward: [`super::Egress`] does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `egress:` in the YAML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressFile {
    pub listen: Option<String>,
    /// Lifetime of minted tokens, seconds (1 to 3600, default 60).
    pub token_ttl: Option<u64>,
    /// How long a context handle stays valid after its inbound request ended, seconds.
    pub context_grace: Option<u64>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub upstream: String,
    pub audience: String,
    pub tls: Option<RouteTlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTlsFile {
    /// The name the server's certificate must carry (DNS SAN); also sent as SNI.
    pub server_name: String,
    /// CA bundle that signs the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// Present this sidecar's own certificate (`tls.cert_file`/`tls.key_file` of the inbound
    /// side) as a client certificate.
    #[serde(default = "yes")]
    pub client_certificate: bool,
}

fn yes() -> bool {
    true
}

/// How a route is selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Host(String),
    PathPrefix { prefix: String, strip: bool },
}

#[derive(Debug, Clone)]
pub struct RouteTls {
    pub server_name: String,
    pub ca_file: PathBuf,
    pub client_certificate: bool,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub upstream: SocketAddr,
    pub audience: String,
    pub tls: Option<RouteTls>,
}

/// Validated outbound settings.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    pub listen: SocketAddr,
    pub token_ttl: Duration,
    pub context_grace: Duration,
    pub routes: Vec<Route>,
}

pub const DEFAULT_EGRESS_LISTEN: &str = "127.0.0.1:15001";

impl EgressSettings {
    /// Builds the settings from the file section and the `--egress-listen` flag.
    pub fn resolve(
        file: Option<EgressFile>,
        flag_listen: Option<String>,
        flag_ttl: Option<u64>,
    ) -> Result<Option<Self>, ConfigError> {
        let enabled = file.is_some() || flag_listen.is_some();
        if !enabled {
            return Ok(None);
        }
        let file = file.unwrap_or_default();
        let listen_text = flag_listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_EGRESS_LISTEN.to_string());
        let listen: SocketAddr = listen_text.trim().parse().map_err(|_| {
            err(
                "--egress-listen",
                format!("{listen_text:?} is not an IP:PORT address"),
                "write it like 127.0.0.1:15001",
            )
        })?;
        if !listen.ip().is_loopback() {
            // Anyone who reaches this listener gets tokens minted as this service.
            return Err(err(
                "--egress-listen",
                format!("{listen} is not a loopback address; anyone reaching it could mint tokens"),
                "listen on 127.0.0.1 (the app shares the pod's network namespace)",
            ));
        }
        let ttl = flag_ttl.or(file.token_ttl).unwrap_or(60);
        if !(1..=3600).contains(&ttl) {
            return Err(err(
                "egress.token_ttl",
                format!("{ttl} is out of range"),
                "choose between 1 and 3600 seconds",
            ));
        }
        let grace = file.context_grace.unwrap_or(5);
        if grace > 300 {
            return Err(err(
                "egress.context_grace",
                format!("{grace} is too long"),
                "choose at most 300 seconds",
            ));
        }
        let routes = file
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| route(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        check_duplicates(&routes)?;
        Ok(Some(Self {
            listen,
            token_ttl: Duration::from_secs(ttl),
            context_grace: Duration::from_secs(grace),
            routes,
        }))
    }

    /// The index of the route for a request's host (port ignored) and path: host routes
    /// first, then the longest matching path prefix.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port).map(str::to_ascii_lowercase);
        let by_host = self
            .routes
            .iter()
            .position(|r| matches!(&r.matcher, RouteMatch::Host(h) if Some(h) == host.as_ref()));
        by_host.or_else(|| {
            self.routes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match &r.matcher {
                    RouteMatch::PathPrefix { prefix, .. } if path.starts_with(prefix.as_str()) => {
                        Some((prefix.len(), i))
                    }
                    _ => None,
                })
                .max()
                .map(|(_, i)| i)
        })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| h.trim_start_matches('['))
            .unwrap_or(host);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host)
}

fn route(i: usize, r: RouteFile) -> Result<Route, ConfigError> {
    let field = format!("egress.routes[{i}]");
    let matcher = match (r.host, r.path_prefix) {
        (Some(h), None) if !h.trim().is_empty() => RouteMatch::Host(h.trim().to_ascii_lowercase()),
        (None, Some(p)) if p.starts_with('/') => RouteMatch::PathPrefix {
            prefix: p,
            strip: r.strip_prefix,
        },
        (None, Some(p)) => {
            return Err(err(
                &field,
                format!("path_prefix {p:?} must start with '/'"),
                "write it like /billing/",
            ));
        }
        _ => {
            return Err(err(
                &field,
                "needs exactly one of host or path_prefix",
                "set host: <service> or path_prefix: /<service>/",
            ));
        }
    };
    let upstream = r.upstream.trim().parse().map_err(|_| {
        err(
            &format!("{field}.upstream"),
            format!("{:?} is not an IP:PORT address", r.upstream),
            "write it like 10.0.0.7:8443",
        )
    })?;
    if r.audience.trim().is_empty() {
        return Err(err(
            &format!("{field}.audience"),
            "is empty",
            "set the identity of the target service",
        ));
    }
    let name = r.name.unwrap_or_else(|| match &matcher {
        RouteMatch::Host(h) => h.clone(),
        RouteMatch::PathPrefix { prefix, .. } => prefix.clone(),
    });
    let tls = r.tls.map(|t| RouteTls {
        server_name: t.server_name,
        ca_file: t.ca_file,
        client_certificate: t.client_certificate,
    });
    Ok(Route {
        name,
        matcher,
        upstream,
        audience: r.audience.trim().to_string(),
        tls,
    })
}

fn check_duplicates(routes: &[Route]) -> Result<(), ConfigError> {
    for (i, a) in routes.iter().enumerate() {
        if let Some(b) = routes[..i].iter().find(|b| b.matcher == a.matcher) {
            return Err(err(
                "egress.routes",
                format!(
                    "routes {:?} and {:?} match the same requests",
                    b.name, a.name
                ),
                "remove one of them",
            ));
        }
    }
    Ok(())
}

fn err(field: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> EgressSettings {
        let file: EgressFile = serde_saphyr::from_str(yaml).expect("yaml");
        EgressSettings::resolve(Some(file), None, None)
            .expect("valid")
            .expect("enabled")
    }

    #[test]
    fn host_routes_ignore_the_port_and_prefixes_pick_the_longest() {
        let t = table(
            "routes:\n- {host: todos, upstream: 127.0.0.1:1, audience: todos}\n\
             - {path_prefix: /b/, upstream: 127.0.0.1:2, audience: b}\n\
             - {path_prefix: /b/c/, upstream: 127.0.0.1:3, audience: c}\n",
        );
        let aud = |host, path| {
            t.find(Some(host), path)
                .map(|i| t.routes[i].audience.as_str())
        };
        assert_eq!(aud("Todos:15001", "/x"), Some("todos"));
        assert_eq!(aud("127.0.0.1:15001", "/b/c/d"), Some("c"));
        assert_eq!(aud("127.0.0.1:15001", "/b/x"), Some("b"));
        assert!(t.find(Some("billing"), "/x").is_none());
        assert_eq!(t.token_ttl, Duration::from_secs(60));
    }

    #[test]
    fn a_route_needs_exactly_one_matcher() {
        let file: EgressFile =
            serde_saphyr::from_str("routes:\n- {upstream: 127.0.0.1:1, audience: a}\n")
                .expect("yaml");
        let e = EgressSettings::resolve(Some(file), None, None).expect_err("invalid");
        assert_eq!(e.field, "egress.routes[0]");
    }

    #[test]
    fn egress_listens_on_loopback_only() {
        let e =
            EgressSettings::resolve(None, Some("0.0.0.0:15001".into()), None).expect_err("open");
        assert_eq!(e.field, "--egress-listen");
    }

    #[test]
    fn ttl_must_be_sane() {
        let e =
            EgressSettings::resolve(Some(EgressFile::default()), None, Some(0)).expect_err("zero");
        assert_eq!(e.field, "egress.token_ttl");
    }
}
