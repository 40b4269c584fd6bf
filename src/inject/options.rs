//! What one pod asks for, read from its annotations (all under `portcullis.dev/`).
//!
//! | annotation | meaning | default |
//! |---|---|---|
//! | `inject` | `"true"` opts in, `"false"` opts out of a labelled namespace | — |
//! | `identity` | the identity that `aud` must contain | `spiffe://<td>/ns/<ns>/sa/<sa>` |
//! | `app-port` | the app's port on 127.0.0.1 | the app's first TCP port, else 8080 |
//! | `keys-secret` | the Secret holding the HMAC keys | `--keys-secret` |
//! | `public-paths` | open routes: `PATH`, `PATH*`, `METHOD PATH`, comma-separated | none |
//! | `rules-configmap` | a ConfigMap whose key `portcullis.yaml` is the sidecar's config | none |
//! | `issuers` | accepted token issuers, comma-separated | `--issuer` |
//! | `sidecar-mode` | `native` or `classic` | `--sidecar-mode` |
//!
//! The app container is the one `kubectl.kubernetes.io/default-container` names, else the first.
//! Parsing never guesses: a value it cannot use is an [`InjectError::InvalidAnnotation`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::error::InjectError;
use super::settings::{self, InjectSettings, SidecarMode};
use super::sidecar;

pub const INJECT: &str = "portcullis.dev/inject";
pub const IDENTITY: &str = "portcullis.dev/identity";
pub const APP_PORT: &str = "portcullis.dev/app-port";
pub const KEYS_SECRET: &str = "portcullis.dev/keys-secret";
pub const PUBLIC_PATHS: &str = "portcullis.dev/public-paths";
pub const RULES_CONFIGMAP: &str = "portcullis.dev/rules-configmap";
pub const ISSUERS: &str = "portcullis.dev/issuers";
pub const SIDECAR_MODE: &str = "portcullis.dev/sidecar-mode";
/// Set by the webhook on every pod it injected.
pub const STATUS: &str = "portcullis.dev/status";
/// The namespace label that turns injection on for every pod in the namespace.
pub const NAMESPACE_LABEL: &str = "portcullis.dev/injection";
/// The standard annotation naming a pod's main container.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The app's port when neither the annotation nor a declared container port says.
pub const DEFAULT_APP_PORT: u16 = 8080;

/// Everything the sidecar of this pod is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOptions {
    pub identity: String,
    /// Index of the app container in `spec.containers`.
    pub app_container: usize,
    pub app_port: u16,
    pub keys_secret: String,
    pub public_paths: Vec<String>,
    pub rules_configmap: Option<String>,
    pub issuers: Vec<String>,
    pub mode: SidecarMode,
}

/// The pod's answer to "inject me?": `Some(true)`, `Some(false)`, or `None` when unannotated.
pub fn inject_annotation(pod: &Pod) -> Result<Option<bool>, InjectError> {
    match annotation(pod, INJECT) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(invalid(INJECT, other, "use \"true\" or \"false\"")),
    }
}

/// Reads every per-pod option, falling back to the webhook's settings.
pub fn read(
    pod: &Pod,
    namespace: &str,
    settings: &InjectSettings,
) -> Result<PodOptions, InjectError> {
    let containers = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(InjectError::NoContainers);
    }
    let app_container = app_container(pod, containers)?;

    Ok(PodOptions {
        identity: identity(pod, namespace, settings)?,
        app_container,
        app_port: app_port(pod, &containers[app_container])?,
        keys_secret: name_annotation(pod, KEYS_SECRET)?
            .unwrap_or_else(|| settings.keys_secret.clone()),
        public_paths: public_paths(pod)?,
        rules_configmap: name_annotation(pod, RULES_CONFIGMAP)?,
        issuers: issuers(pod)?.unwrap_or_else(|| settings.issuers.clone()),
        mode: sidecar_mode(pod)?.unwrap_or(settings.sidecar_mode),
    })
}

fn annotations(pod: &Pod) -> Option<&BTreeMap<String, String>> {
    pod.metadata.annotations.as_ref()
}

fn annotation<'p>(pod: &'p Pod, name: &str) -> Option<&'p str> {
    annotations(pod)
        .and_then(|all| all.get(name))
        .map(String::as_str)
}

fn invalid(annotation: &'static str, value: &str, reason: &str) -> InjectError {
    InjectError::InvalidAnnotation {
        annotation,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn app_container(pod: &Pod, containers: &[Container]) -> Result<usize, InjectError> {
    let Some(name) = annotation(pod, DEFAULT_CONTAINER) else {
        return Ok(0);
    };
    containers
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| InjectError::UnknownDefaultContainer {
            name: name.to_string(),
        })
}

fn identity(pod: &Pod, namespace: &str, settings: &InjectSettings) -> Result<String, InjectError> {
    if let Some(value) = annotation(pod, IDENTITY) {
        let usable = !value.is_empty()
            && !value.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',');
        if !usable {
            return Err(invalid(
                IDENTITY,
                value,
                "must be one non-empty name without spaces or commas",
            ));
        }
        return Ok(value.to_string());
    }
    let account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|name| !name.is_empty())
        .unwrap_or("default");
    Ok(format!(
        "spiffe://{}/ns/{namespace}/sa/{account}",
        settings.trust_domain
    ))
}

fn app_port(pod: &Pod, app: &Container) -> Result<u16, InjectError> {
    let port = match annotation(pod, APP_PORT) {
        Some(value) => match value.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(invalid(APP_PORT, value, "must be a port number 1-65535")),
        },
        None => first_tcp_port(app).unwrap_or(DEFAULT_APP_PORT),
    };
    if sidecar::RESERVED_PORTS.contains(&port) {
        let value = port.to_string();
        return Err(invalid(
            APP_PORT,
            &value,
            "is one of the sidecar's own ports (8443, 9901)",
        ));
    }
    Ok(port)
}

fn first_tcp_port(container: &Container) -> Option<u16> {
    let ports = container.ports.as_deref().unwrap_or_default();
    ports
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .find_map(|p| u16::try_from(p.container_port).ok())
}

fn name_annotation(pod: &Pod, name: &'static str) -> Result<Option<String>, InjectError> {
    match annotation(pod, name) {
        None => Ok(None),
        Some(value) if settings::is_dns_subdomain(value) => Ok(Some(value.to_string())),
        Some(value) => Err(invalid(
            name,
            value,
            "must be a valid object name (DNS-1123)",
        )),
    }
}

fn public_paths(pod: &Pod) -> Result<Vec<String>, InjectError> {
    let Some(value) = annotation(pod, PUBLIC_PATHS) else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !is_public_path(entry) {
            return Err(invalid(
                PUBLIC_PATHS,
                entry,
                "use PATH, PATH* or METHOD PATH, paths starting with /",
            ));
        }
        entries.push(entry.to_string());
    }
    Ok(entries)
}

/// `PATH`, `PATH*` (prefix) or `METHOD PATH`, where a path starts with `/` and `*` may only end it.
pub fn is_public_path(entry: &str) -> bool {
    let (method, path) = match entry.split_once(' ') {
        Some((method, path)) => (Some(method), path),
        None => (None, entry),
    };
    let method_ok =
        method.is_none_or(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()));
    let body = path.strip_suffix('*').unwrap_or(path);
    method_ok
        && body.starts_with('/')
        && !body.contains(|c: char| c.is_whitespace() || c.is_control() || c == '*' || c == ',')
}

fn issuers(pod: &Pod) -> Result<Option<Vec<String>>, InjectError> {
    let Some(value) = annotation(pod, ISSUERS) else {
        return Ok(None);
    };
    let issuers: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .collect();
    if issuers.is_empty() || issuers.iter().any(|i| i.contains(char::is_whitespace)) {
        return Err(invalid(
            ISSUERS,
            value,
            "must list issuers separated by commas",
        ));
    }
    Ok(Some(issuers))
}

fn sidecar_mode(pod: &Pod) -> Result<Option<SidecarMode>, InjectError> {
    match annotation(pod, SIDECAR_MODE) {
        None => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|()| invalid(SIDECAR_MODE, value, "use \"native\" or \"classic\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_path_forms_are_recognised() {
        assert!(is_public_path("/healthz"));
        assert!(is_public_path("/static/*"));
        assert!(is_public_path("GET /healthz"));
        assert!(!is_public_path("healthz"));
        assert!(!is_public_path("get /healthz"));
        assert!(!is_public_path("/a*/b"));
        assert!(!is_public_path("GET  /x"));
    }
}
