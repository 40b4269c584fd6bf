//! The sidecar container and its volumes, as the webhook adds them to a pod.
//!
//! It is the same container `k8s/todo/deployment.yaml` writes by hand: `portcullis run`
//! configured through `PORTCULLIS_…` variables, the keys Secret mounted as a whole directory
//! (never with `subPath`, which would freeze it), probes on the admin port with the startup
//! probe tied to "keys loaded" (`/startupz`; `/readyz` also needs the app, which a native
//! sidecar's startup probe must not wait for), modest requests and limits, and a security context
//! that runs it as a non-root user with a read-only root filesystem and no capabilities.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::error::InjectError;
use super::options::PodOptions;
use super::settings::{InjectSettings, SidecarMode};

/// The container's name; a pod with a container of that name is already injected.
pub const CONTAINER_NAME: &str = "portcullis";
/// Where callers reach the sidecar (the Service's `targetPort`).
pub const LISTEN_PORT: u16 = 8443;
/// The admin listener: `/healthz`, `/startupz`, `/readyz`, `/metrics`.
pub const ADMIN_PORT: u16 = 9901;
/// Ports the app must not use.
pub const RESERVED_PORTS: [u16; 2] = [LISTEN_PORT, ADMIN_PORT];

pub const KEYS_VOLUME: &str = "portcullis-keys";
pub const KEYS_DIR: &str = "/var/run/secrets/portcullis/keys";
pub const CONFIG_VOLUME: &str = "portcullis-config";
pub const CONFIG_DIR: &str = "/etc/portcullis";
/// The key the rules ConfigMap must hold.
pub const CONFIG_FILE: &str = "portcullis.yaml";
/// The distroless `nonroot` user.
pub const RUN_AS: i64 = 65532;

/// What the webhook adds: one container and the volumes it mounts.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    pub container: Container,
    pub volumes: Vec<Volume>,
}

/// Refuses a pod that already uses a port or volume name the sidecar needs, or the node's
/// network, where 8443 and 9901 would collide between pods.
pub fn check_conflicts(spec: &PodSpec) -> Result<(), InjectError> {
    if spec.host_network == Some(true) {
        return Err(InjectError::HostNetwork);
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    for container in spec.containers.iter().chain(init) {
        for port in container.ports.as_deref().unwrap_or_default() {
            if let Some(&taken) = RESERVED_PORTS
                .iter()
                .find(|&&p| i32::from(p) == port.container_port)
            {
                return Err(InjectError::PortTaken {
                    port: taken,
                    container: container.name.clone(),
                });
            }
        }
    }
    for volume in spec.volumes.as_deref().unwrap_or_default() {
        if volume.name == KEYS_VOLUME || volume.name == CONFIG_VOLUME {
            return Err(InjectError::VolumeTaken {
                name: volume.name.clone(),
            });
        }
    }
    Ok(())
}

/// Builds the sidecar for a pod. `public_paths` are the pod's own plus the probe exemptions.
pub fn build(options: &PodOptions, public_paths: &[String], settings: &InjectSettings) -> Sidecar {
    let mut mounts = vec![read_only_mount(KEYS_VOLUME, KEYS_DIR)];
    let mut volumes = vec![Volume {
        name: KEYS_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(options.keys_secret.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if let Some(configmap) = &options.rules_configmap {
        mounts.push(read_only_mount(CONFIG_VOLUME, CONFIG_DIR));
        volumes.push(Volume {
            name: CONFIG_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: configmap.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(settings.sidecar_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec!["run".to_string()]),
        // Only a native sidecar carries a restart policy; that is what makes it one.
        restart_policy: (options.mode == SidecarMode::Native).then(|| "Always".to_string()),
        ports: Some(vec![
            port("portcullis", LISTEN_PORT),
            port("portcullis-admin", ADMIN_PORT),
        ]),
        env: Some(env(options, public_paths)),
        volume_mounts: Some(mounts),
        startup_probe: Some(admin_probe("/startupz", 1, 60)),
        readiness_probe: Some(admin_probe("/readyz", 5, 2)),
        liveness_probe: Some(admin_probe("/healthz", 10, 3)),
        resources: Some(resources()),
        security_context: Some(security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    Sidecar { container, volumes }
}

fn env(options: &PodOptions, public_paths: &[String]) -> Vec<EnvVar> {
    let mut env = vec![
        var("PORTCULLIS_IDENTITY", &options.identity),
        var("PORTCULLIS_LISTEN", &format!("0.0.0.0:{LISTEN_PORT}")),
        var(
            "PORTCULLIS_UPSTREAM",
            &format!("127.0.0.1:{}", options.app_port),
        ),
        var("PORTCULLIS_ADMIN_LISTEN", &format!("0.0.0.0:{ADMIN_PORT}")),
        var("PORTCULLIS_KEYS_DIR", KEYS_DIR),
        var("PORTCULLIS_LOG_FORMAT", "json"),
    ];
    if !options.issuers.is_empty() {
        env.push(var("PORTCULLIS_ISSUER", &options.issuers.join(",")));
    }
    if !public_paths.is_empty() {
        env.push(var("PORTCULLIS_PUBLIC_PATH", &public_paths.join(",")));
    }
    if options.rules_configmap.is_some() {
        env.push(var(
            "PORTCULLIS_CONFIG",
            &format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ));
    }
    env
}

fn var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn admin_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("portcullis-admin".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("50m", "32Mi")),
        limits: Some(quantities("500m", "128Mi")),
        ..Default::default()
    }
}

fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
