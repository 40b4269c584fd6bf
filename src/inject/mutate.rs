//! The webhook's one decision, as a pure function: given an `AdmissionRequest`, skip the pod,
//! inject it (a JSONPatch), deny it, or — only with `--unsafe-fail-open` — admit it uninjected
//! with a warning.
//!
//! A pod is injected when it opts in with `portcullis.dev/inject: "true"`, or when it arrives
//! through the namespace route (its namespace carries `portcullis.dev/injection: enabled`, which
//! the `MutatingWebhookConfiguration` selects, since the webhook never reads namespaces itself)
//! and does not opt out with `"false"`. Whatever the route, pods in the webhook's own namespace
//! and the `kube-*` system namespaces are never touched, and a pod that already has the sidecar
//! is returned unchanged, so reinvocation is harmless. The answer is the same for a `dryRun`
//! request: nothing here has side effects.

use json_patch::{Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;

use super::error::InjectError;
use super::options::{self, PodOptions};
use super::patch;
use super::probes;
use super::settings::{InjectSettings, SidecarMode};
use super::sidecar;

/// Namespaces that are never injected, whatever the webhook configuration sends.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// How the API server reached the webhook, i.e. which webhook entry matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Any namespace: inject only pods annotated `portcullis.dev/inject: "true"`.
    PodAnnotation,
    /// A namespace labelled `portcullis.dev/injection: enabled`: inject unless the pod opts out.
    EnabledNamespace,
}

/// Why a pod was admitted unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Not the creation of a core/v1 pod (a misconfigured webhook rule).
    NotAPodCreation,
    /// The webhook's own namespace or a system namespace.
    ProtectedNamespace(String),
    /// Reached through the annotation route without `inject: "true"`.
    NotOptedIn,
    /// Annotated `inject: "false"` in an enabled namespace.
    OptedOut,
    /// The pod already has a `portcullis` container.
    AlreadyInjected,
}

/// What [`mutate()`] decided, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected {
        identity: String,
        mode: SidecarMode,
    },
    Skipped(SkipReason),
    Denied(InjectError),
    /// Injection was impossible and the webhook runs with `--unsafe-fail-open`.
    AdmittedUninjected(InjectError),
}

/// The response to send and the outcome behind it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub response: AdmissionResponse,
    pub outcome: Outcome,
}

/// Decides what to do with one admission request. Pure: the same request and settings always
/// give the same verdict.
pub fn mutate(
    request: &AdmissionRequest<DynamicObject>,
    route: Route,
    settings: &InjectSettings,
) -> Verdict {
    let allowed = AdmissionResponse::from(request);
    let plan = match decide(request, route, settings) {
        Ok(Decision::Inject(plan)) => plan,
        Ok(Decision::Skip(reason)) => {
            return Verdict {
                response: allowed,
                outcome: Outcome::Skipped(reason),
            };
        }
        Err(error) => return refuse(allowed, error, settings),
    };

    match allowed.clone().with_patch(Patch(plan.ops)) {
        Ok(mut response) => {
            if !plan.warnings.is_empty() {
                response.warnings = Some(plan.warnings);
            }
            let outcome = Outcome::Injected {
                identity: plan.identity,
                mode: plan.mode,
            };
            Verdict { response, outcome }
        }
        Err(error) => refuse(
            allowed,
            InjectError::Encode {
                reason: error.to_string(),
            },
            settings,
        ),
    }
}

/// Denies the pod, or admits it uninjected with a warning when failing open.
fn refuse(allowed: AdmissionResponse, error: InjectError, settings: &InjectSettings) -> Verdict {
    if settings.unsafe_fail_open {
        let mut response = allowed;
        response.warnings = Some(vec![format!(
            "portcullis: sidecar NOT injected ({error}); admitted only because of \
             --unsafe-fail-open"
        )]);
        return Verdict {
            response,
            outcome: Outcome::AdmittedUninjected(error),
        };
    }
    let response = allowed.deny(format!("portcullis: cannot inject the sidecar: {error}"));
    Verdict {
        response,
        outcome: Outcome::Denied(error),
    }
}

enum Decision {
    Skip(SkipReason),
    Inject(Plan),
}

struct Plan {
    ops: Vec<PatchOperation>,
    warnings: Vec<String>,
    identity: String,
    mode: SidecarMode,
}

fn decide(
    request: &AdmissionRequest<DynamicObject>,
    route: Route,
    settings: &InjectSettings,
) -> Result<Decision, InjectError> {
    if !is_pod_creation(request) {
        return Ok(Decision::Skip(SkipReason::NotAPodCreation));
    }
    let namespace = namespace(request)?;
    if namespace == settings.own_namespace || SYSTEM_NAMESPACES.contains(&namespace) {
        return Ok(Decision::Skip(SkipReason::ProtectedNamespace(
            namespace.to_string(),
        )));
    }

    let pod = decode_pod(request)?;
    match (route, options::inject_annotation(&pod)?) {
        (Route::PodAnnotation, Some(true)) => {}
        (Route::PodAnnotation, _) => return Ok(Decision::Skip(SkipReason::NotOptedIn)),
        (Route::EnabledNamespace, Some(false)) => return Ok(Decision::Skip(SkipReason::OptedOut)),
        (Route::EnabledNamespace, _) => {}
    }
    if is_injected(&pod) {
        return Ok(Decision::Skip(SkipReason::AlreadyInjected));
    }

    let options = options::read(&pod, namespace, settings)?;
    plan(&pod, options, settings).map(Decision::Inject)
}

fn is_pod_creation(request: &AdmissionRequest<DynamicObject>) -> bool {
    request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == Operation::Create
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
}

/// The request's namespace, else the object's (both are set for a namespaced create).
fn namespace(request: &AdmissionRequest<DynamicObject>) -> Result<&str, InjectError> {
    let from_object = request
        .object
        .as_ref()
        .and_then(|o| o.metadata.namespace.as_deref());
    request
        .namespace
        .as_deref()
        .or(from_object)
        .filter(|ns| !ns.is_empty())
        .ok_or(InjectError::MissingNamespace)
}

fn decode_pod(request: &AdmissionRequest<DynamicObject>) -> Result<Pod, InjectError> {
    let object = request.object.as_ref().ok_or(InjectError::MissingObject)?;
    let not_a_pod = |error: serde_json::Error| InjectError::NotAPod {
        reason: error.to_string(),
    };
    let value = serde_json::to_value(object).map_err(not_a_pod)?;
    serde_json::from_value(value).map_err(not_a_pod)
}

fn is_injected(pod: &Pod) -> bool {
    let marked = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.get(options::STATUS).is_some_and(|v| v == "injected"));
    let Some(spec) = &pod.spec else {
        return marked;
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();
    marked
        || spec
            .containers
            .iter()
            .chain(init)
            .any(|c| c.name == sidecar::CONTAINER_NAME)
}

/// The patch for one pod: probes first (they address existing containers by index), then the
/// sidecar, its volumes and the status annotation.
fn plan(pod: &Pod, options: PodOptions, settings: &InjectSettings) -> Result<Plan, InjectError> {
    let Some(spec) = &pod.spec else {
        return Err(InjectError::NoContainers);
    };
    sidecar::check_conflicts(spec)?;

    let probes = probes::plan(&spec.containers, options.app_port);
    let mut public_paths = options.public_paths.clone();
    for entry in &probes.public_paths {
        if !public_paths.contains(entry) {
            public_paths.push(entry.clone());
        }
    }
    let sidecar = sidecar::build(&options, &public_paths, settings);

    let mut ops = Vec::new();
    for rewrite in &probes.rewrites {
        let index = rewrite.container.to_string();
        let port = [
            "spec",
            "containers",
            &index,
            rewrite.field,
            "httpGet",
            "port",
        ];
        ops.push(patch::replace(&port, Value::from(sidecar::LISTEN_PORT)));
    }
    let container = to_json(&sidecar.container)?;
    match options.mode {
        // First among the init containers, so the app's own init containers can use it too.
        SidecarMode::Native => {
            let exists = spec.init_containers.is_some();
            patch::prepend(&mut ops, &["spec", "initContainers"], exists, container);
        }
        SidecarMode::Classic => {
            patch::append(&mut ops, &["spec", "containers"], true, vec![container])
        }
    }
    let volumes = sidecar
        .volumes
        .iter()
        .map(to_json)
        .collect::<Result<Vec<_>, _>>()?;
    patch::append(
        &mut ops,
        &["spec", "volumes"],
        spec.volumes.is_some(),
        volumes,
    );
    let has_annotations = pod.metadata.annotations.is_some();
    patch::set_annotation(&mut ops, has_annotations, options::STATUS, "injected");

    Ok(Plan {
        ops,
        warnings: probes.warnings,
        identity: options.identity,
        mode: options.mode,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, InjectError> {
    serde_json::to_value(value).map_err(|error| InjectError::Encode {
        reason: error.to_string(),
    })
}
