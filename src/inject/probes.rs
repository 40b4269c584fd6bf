//! Moving the app's own HTTP probes to the sidecar's port.
//!
//! The app listens on 127.0.0.1 only, and the kubelet probes the pod IP, so a probe aimed at the
//! app port would fail once the app is bound safely. Each HTTP liveness, readiness and startup
//! probe of a container that targets the app port (by number or by port name) is pointed at the
//! sidecar's port instead, and exactly `GET <its path>` becomes a public route so the sidecar
//! lets the kubelet through. Nothing else is opened: a probe this module cannot express safely
//! (HTTPS, a custom `host`, a path the public-path syntax cannot hold) is left alone and reported
//! as a warning for the person who created the pod.

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::options::is_public_path;

/// One probe to point at the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRewrite {
    /// Index in `spec.containers`.
    pub container: usize,
    /// The probe's field name: `livenessProbe`, `readinessProbe` or `startupProbe`.
    pub field: &'static str,
}

/// What to rewrite, which routes that opens, and what was left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbePlan {
    pub rewrites: Vec<ProbeRewrite>,
    /// `GET <path>` entries for the sidecar's public paths, without duplicates.
    pub public_paths: Vec<String>,
    pub warnings: Vec<String>,
}

/// Finds every HTTP probe in `containers` that targets `app_port`.
pub fn plan(containers: &[Container], app_port: u16) -> ProbePlan {
    let mut plan = ProbePlan::default();
    for (index, container) in containers.iter().enumerate() {
        let probes = [
            ("livenessProbe", &container.liveness_probe),
            ("readinessProbe", &container.readiness_probe),
            ("startupProbe", &container.startup_probe),
        ];
        for (field, probe) in probes {
            if let Some(probe) = probe {
                consider(&mut plan, container, index, field, probe, app_port);
            }
        }
    }
    plan
}

fn consider(
    plan: &mut ProbePlan,
    container: &Container,
    index: usize,
    field: &'static str,
    probe: &Probe,
    app_port: u16,
) {
    let Some(get) = &probe.http_get else {
        return;
    };
    if resolve_port(&get.port, container) != Some(app_port) {
        return;
    }

    let left_alone = |why: &str| {
        format!(
            "{field} of container {} {why}; left on the app port",
            container.name
        )
    };
    if get.host.as_deref().is_some_and(|host| !host.is_empty()) {
        plan.warnings.push(left_alone("sets a host"));
        return;
    }
    if get.scheme.as_deref().is_some_and(|scheme| scheme != "HTTP") {
        plan.warnings.push(left_alone("uses HTTPS"));
        return;
    }
    let path = get.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
    // The query string is not part of route matching.
    let path = path.split('?').next().unwrap_or(path);
    let entry = format!("GET {path}");
    if !is_public_path(&entry) {
        plan.warnings
            .push(left_alone("has a path the sidecar cannot exempt"));
        return;
    }

    plan.rewrites.push(ProbeRewrite {
        container: index,
        field,
    });
    if !plan.public_paths.contains(&entry) {
        plan.public_paths.push(entry);
    }
}

/// The port number a probe targets: a number, or the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(number) => u16::try_from(*number).ok(),
        IntOrString::String(name) => container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction};

    use super::*;

    fn http_probe(port: IntOrString, path: &str) -> Option<Probe> {
        let get = HTTPGetAction {
            port,
            path: Some(path.to_string()),
            ..Default::default()
        };
        Some(Probe {
            http_get: Some(get),
            ..Default::default()
        })
    }

    #[test]
    fn named_port_probe_on_the_app_port_is_rewritten() {
        let app = Container {
            name: "app".to_string(),
            ports: Some(vec![ContainerPort {
                name: Some("http".to_string()),
                container_port: 8080,
                ..Default::default()
            }]),
            liveness_probe: http_probe(IntOrString::String("http".to_string()), "/live?verbose=1"),
            readiness_probe: http_probe(IntOrString::Int(9090), "/metrics"),
            ..Default::default()
        };
        let plan = plan(&[app], 8080);
        assert_eq!(
            plan.rewrites,
            [ProbeRewrite {
                container: 0,
                field: "livenessProbe"
            }]
        );
        assert_eq!(plan.public_paths, ["GET /live"]);
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn https_probe_is_left_alone_with_a_warning() {
        let mut probe = http_probe(IntOrString::Int(8080), "/ready");
        if let Some(get) = probe.as_mut().and_then(|p| p.http_get.as_mut()) {
            get.scheme = Some("HTTPS".to_string());
        }
        let app = Container {
            name: "app".to_string(),
            readiness_probe: probe,
            ..Default::default()
        };
        let plan = plan(&[app], 8080);
        assert!(plan.rewrites.is_empty());
        assert!(plan.public_paths.is_empty());
        assert_eq!(plan.warnings.len(), 1);
    }
}
