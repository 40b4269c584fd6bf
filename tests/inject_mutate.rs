//! The webhook's decision on real `AdmissionReview` fixtures, through the pure `mutate` function:
//! each patch is applied with `json-patch` and the resulting pod is checked field by field.
//!
//! With `PORTCULLIS_MUTATED_PODS_DIR` set, the mutated pods are also written there, so that
//! `ci/validate-k8s.sh` can validate them against the Kubernetes schema.

#[path = "inject_common/mod.rs"]
mod common;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis::inject::{
    InjectSettings, Outcome, Route, SidecarMode, SkipReason, Verdict, mutate,
};
use serde_json::Value;

fn settings() -> InjectSettings {
    InjectSettings::new("registry.example/portcullis:0.1.0")
}

/// Runs one fixture through `mutate` and returns the verdict and the resulting pod.
fn run(name: &str, route: Route, settings: &InjectSettings) -> Result<(Verdict, Pod)> {
    let review = common::fixture(name)?;
    let verdict = mutate(&common::request(&review)?, route, settings);
    let pod = common::patched_pod(&review, &verdict.response)?;
    common::write_pod(name, &pod)?;
    Ok((verdict, serde_json::from_value(pod)?))
}

fn sidecar(pod: &Pod) -> Result<&Container> {
    let spec = pod.spec.as_ref().context("no spec")?;
    let init = spec.init_containers.as_deref().unwrap_or_default();
    spec.containers
        .iter()
        .chain(init)
        .find(|c| c.name == "portcullis")
        .context("no portcullis container")
}

fn env<'c>(container: &'c Container, name: &str) -> Option<&'c str> {
    let vars = container.env.as_deref().unwrap_or_default();
    vars.iter()
        .find(|v| v.name == name)
        .and_then(|v| v.value.as_deref())
}

fn probe_port(probe: &Option<Probe>) -> Option<IntOrString> {
    probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|g| g.port.clone())
}

fn assert_unchanged(verdict: &Verdict, reason: SkipReason) {
    assert_eq!(verdict.outcome, Outcome::Skipped(reason));
    assert!(verdict.response.allowed);
    assert!(verdict.response.patch.is_none());
}

#[test]
fn pod_without_ports_gets_a_native_sidecar_for_port_8080() -> Result<()> {
    let (verdict, pod) = run("no-ports", Route::PodAnnotation, &settings())?;
    assert!(verdict.response.allowed);
    assert!(matches!(
        verdict.outcome,
        Outcome::Injected {
            mode: SidecarMode::Native,
            ..
        }
    ));

    let spec = pod.spec.as_ref().context("no spec")?;
    let init = spec.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1);
    let sidecar = &init[0];
    assert_eq!(sidecar.name, "portcullis");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.example/portcullis:0.1.0")
    );
    assert_eq!(sidecar.args.as_deref(), Some(&["run".to_string()][..]));
    assert_eq!(
        spec.containers.len(),
        1,
        "the app container list is untouched"
    );

    assert_eq!(
        env(sidecar, "PORTCULLIS_IDENTITY"),
        Some("spiffe://cluster.local/ns/todo/sa/todos")
    );
    assert_eq!(env(sidecar, "PORTCULLIS_UPSTREAM"), Some("127.0.0.1:8080"));
    assert_eq!(
        env(sidecar, "PORTCULLIS_KEYS_DIR"),
        Some("/var/run/secrets/portcullis/keys")
    );
    assert_eq!(
        env(sidecar, "PORTCULLIS_PUBLIC_PATH"),
        None,
        "no probe, nothing opened"
    );
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("portcullis.dev/status")),
        Some(&"injected".to_string())
    );
    Ok(())
}

#[test]
fn sidecar_is_locked_down_and_probed_on_the_admin_port() -> Result<()> {
    let (_, pod) = run("no-ports", Route::PodAnnotation, &settings())?;
    let sidecar = sidecar(&pod)?;

    let security = sidecar
        .security_context
        .as_ref()
        .context("no securityContext")?;
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let dropped = security.capabilities.as_ref().and_then(|c| c.drop.clone());
    assert_eq!(dropped, Some(vec!["ALL".to_string()]));

    let path = |probe: &Option<Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
    };
    assert_eq!(path(&sidecar.startup_probe).as_deref(), Some("/startupz"));
    assert_eq!(path(&sidecar.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&sidecar.liveness_probe).as_deref(), Some("/healthz"));
    let admin = IntOrString::String("portcullis-admin".to_string());
    assert_eq!(probe_port(&sidecar.liveness_probe), Some(admin));

    let resources = sidecar.resources.as_ref().context("no resources")?;
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory"))
    );

    let mount = sidecar.volume_mounts.as_deref().unwrap_or_default();
    assert_eq!(mount.len(), 1);
    assert_eq!(mount[0].read_only, Some(true));
    assert_eq!(
        mount[0].sub_path, None,
        "a subPath mount would never update"
    );
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let keys = volumes
        .iter()
        .find(|v| v.name == "portcullis-keys")
        .context("no keys volume")?;
    let secret = keys.secret.as_ref().and_then(|s| s.secret_name.as_deref());
    assert_eq!(secret, Some("portcullis-keys"));
    assert_eq!(volumes.len(), 2, "the kube-api-access volume stays");
    Ok(())
}

#[test]
fn only_the_app_containers_probes_move_to_the_sidecar() -> Result<()> {
    let (verdict, pod) = run("several-containers", Route::PodAnnotation, &settings())?;
    assert!(matches!(verdict.outcome, Outcome::Injected { .. }));
    let spec = pod.spec.as_ref().context("no spec")?;
    let (shipper, app) = (&spec.containers[0], &spec.containers[1]);

    let sidecar_port = Some(IntOrString::Int(8443));
    assert_eq!(probe_port(&app.liveness_probe), sidecar_port);
    assert_eq!(probe_port(&app.readiness_probe), sidecar_port);
    assert_eq!(probe_port(&app.startup_probe), sidecar_port);
    assert_eq!(
        probe_port(&shipper.liveness_probe),
        Some(IntOrString::Int(2020))
    );
    // The probe's path and query are kept; only the port changes.
    let ready = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref());
    assert_eq!(ready.and_then(|g| g.path.as_deref()), Some("/ready?full=1"));

    let sidecar = sidecar(&pod)?;
    assert_eq!(
        env(sidecar, "PORTCULLIS_PUBLIC_PATH"),
        Some("GET /healthz,GET /ready")
    );
    assert_eq!(env(sidecar, "PORTCULLIS_UPSTREAM"), Some("127.0.0.1:8080"));
    Ok(())
}

#[test]
fn existing_init_containers_run_after_the_sidecar() -> Result<()> {
    let (verdict, pod) = run(
        "existing-init-container",
        Route::EnabledNamespace,
        &settings(),
    )?;
    assert!(matches!(verdict.outcome, Outcome::Injected { .. }));
    let spec = pod.spec.as_ref().context("no spec")?;
    let names: Vec<&str> = spec
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["portcullis", "migrate"]);
    // The pod had no annotations: the map is created for the status.
    let annotations = pod
        .metadata
        .annotations
        .as_ref()
        .context("no annotations")?;
    assert_eq!(
        annotations.get("portcullis.dev/status").map(String::as_str),
        Some("injected")
    );
    Ok(())
}

#[test]
fn pod_annotations_shape_a_classic_sidecar() -> Result<()> {
    let (verdict, pod) = run("custom-annotations", Route::PodAnnotation, &settings())?;
    assert!(matches!(
        verdict.outcome,
        Outcome::Injected {
            mode: SidecarMode::Classic,
            ..
        }
    ));
    let spec = pod.spec.as_ref().context("no spec")?;
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers.len(), 2);
    let sidecar = sidecar(&pod)?;
    assert_eq!(
        sidecar.restart_policy, None,
        "a classic sidecar has no restartPolicy"
    );

    assert_eq!(env(sidecar, "PORTCULLIS_IDENTITY"), Some("cart"));
    assert_eq!(env(sidecar, "PORTCULLIS_UPSTREAM"), Some("127.0.0.1:3000"));
    assert_eq!(
        env(sidecar, "PORTCULLIS_ISSUER"),
        Some("spiffe://cluster.local/ns/shop/sa/web,https://login.example")
    );
    assert_eq!(
        env(sidecar, "PORTCULLIS_PUBLIC_PATH"),
        Some("/static/*,GET /version,GET /ready")
    );
    assert_eq!(
        env(sidecar, "PORTCULLIS_CONFIG"),
        Some("/etc/portcullis/portcullis.yaml")
    );

    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let secret = volumes
        .iter()
        .find_map(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.as_deref());
    assert_eq!(secret, Some("shop-keys"));
    let configmap = volumes
        .iter()
        .find_map(|v| v.config_map.as_ref())
        .map(|c| c.name.as_str());
    assert_eq!(configmap, Some("cart-rules"));

    // The HTTPS liveness probe stays on the app port, and the pod's creator is told.
    let app = &spec.containers[0];
    assert_eq!(
        probe_port(&app.liveness_probe),
        Some(IntOrString::Int(3000))
    );
    assert_eq!(
        probe_port(&app.readiness_probe),
        Some(IntOrString::Int(8443))
    );
    let warnings = verdict.response.warnings.unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("livenessProbe") && w.contains("HTTPS")),
        "{warnings:?}"
    );
    Ok(())
}

#[test]
fn already_injected_pod_is_returned_unchanged() -> Result<()> {
    let (verdict, _) = run("already-injected", Route::PodAnnotation, &settings())?;
    assert_unchanged(&verdict, SkipReason::AlreadyInjected);
    Ok(())
}

#[test]
fn injecting_twice_changes_nothing_the_second_time() -> Result<()> {
    let mut review = common::fixture("several-containers")?;
    let first = mutate(
        &common::request(&review)?,
        Route::PodAnnotation,
        &settings(),
    );
    review["request"]["object"] = common::patched_pod(&review, &first.response)?;
    let second = mutate(
        &common::request(&review)?,
        Route::PodAnnotation,
        &settings(),
    );
    assert_unchanged(&second, SkipReason::AlreadyInjected);
    Ok(())
}

#[test]
fn system_and_own_namespaces_are_never_touched() -> Result<()> {
    for route in [Route::PodAnnotation, Route::EnabledNamespace] {
        let (verdict, _) = run("kube-system", route, &settings())?;
        assert_unchanged(
            &verdict,
            SkipReason::ProtectedNamespace("kube-system".to_string()),
        );
        let (verdict, _) = run("own-namespace", route, &settings())?;
        assert_unchanged(
            &verdict,
            SkipReason::ProtectedNamespace("portcullis-system".to_string()),
        );
    }
    Ok(())
}

#[test]
fn opt_out_annotation_wins_over_the_namespace_label() -> Result<()> {
    let (verdict, _) = run("opted-out", Route::EnabledNamespace, &settings())?;
    assert_unchanged(&verdict, SkipReason::OptedOut);
    Ok(())
}

#[test]
fn unannotated_pod_is_not_injected_through_the_annotation_route() -> Result<()> {
    let (verdict, _) = run("existing-init-container", Route::PodAnnotation, &settings())?;
    assert_unchanged(&verdict, SkipReason::NotOptedIn);
    Ok(())
}

#[test]
fn bad_annotation_denies_the_pod_by_default() -> Result<()> {
    let (verdict, _) = run("bad-annotation", Route::PodAnnotation, &settings())?;
    assert!(!verdict.response.allowed);
    assert!(verdict.response.patch.is_none());
    assert!(
        verdict
            .response
            .result
            .message
            .contains("portcullis.dev/app-port")
    );
    assert!(matches!(verdict.outcome, Outcome::Denied(_)));
    Ok(())
}

#[test]
fn bad_annotation_is_admitted_with_a_warning_only_when_failing_open() -> Result<()> {
    let mut settings = settings();
    settings.unsafe_fail_open = true;
    let (verdict, pod) = run("bad-annotation", Route::PodAnnotation, &settings)?;
    assert!(verdict.response.allowed);
    assert!(verdict.response.patch.is_none());
    assert!(matches!(verdict.outcome, Outcome::AdmittedUninjected(_)));
    let warnings = verdict.response.warnings.unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w.contains("NOT injected")),
        "{warnings:?}"
    );
    assert!(sidecar(&pod).is_err());
    Ok(())
}

#[test]
fn dry_run_gets_the_same_answer() -> Result<()> {
    let mut review = common::fixture("no-ports")?;
    let real = mutate(
        &common::request(&review)?,
        Route::PodAnnotation,
        &settings(),
    );
    review["request"]["dryRun"] = Value::Bool(true);
    let dry = mutate(
        &common::request(&review)?,
        Route::PodAnnotation,
        &settings(),
    );
    assert_eq!(real.response.patch, dry.response.patch);
    assert!(dry.response.patch.is_some());
    Ok(())
}

#[test]
fn updates_are_left_alone() -> Result<()> {
    let mut review = common::fixture("no-ports")?;
    review["request"]["operation"] = Value::from("UPDATE");
    let verdict = mutate(
        &common::request(&review)?,
        Route::PodAnnotation,
        &settings(),
    );
    assert_unchanged(&verdict, SkipReason::NotAPodCreation);
    Ok(())
}

#[test]
fn pod_using_a_sidecar_port_is_denied() -> Result<()> {
    let mut review = common::fixture("no-ports")?;
    review["request"]["object"]["spec"]["containers"][0]["ports"] =
        serde_json::json!([{"containerPort": 9901, "protocol": "TCP"}]);
    review["request"]["object"]["metadata"]["annotations"]["portcullis.dev/app-port"] =
        Value::from("8080");
    let verdict = mutate(
        &common::request(&review)?,
        Route::PodAnnotation,
        &settings(),
    );
    assert!(!verdict.response.allowed);
    assert!(
        verdict.response.result.message.contains("9901"),
        "{}",
        verdict.response.result.message
    );
    Ok(())
}

#[test]
fn host_network_pod_is_denied() -> Result<()> {
    let mut review = common::fixture("no-ports")?;
    review["request"]["object"]["spec"]["hostNetwork"] = Value::Bool(true);
    let verdict = mutate(
        &common::request(&review)?,
        Route::PodAnnotation,
        &settings(),
    );
    assert!(!verdict.response.allowed);
    assert!(verdict.response.result.message.contains("hostNetwork"));
    Ok(())
}

#[test]
fn response_echoes_the_request_uid() -> Result<()> {
    let (verdict, _) = run("no-ports", Route::PodAnnotation, &settings())?;
    assert_eq!(verdict.response.uid, "11111111-0000-4000-8000-000000000001");
    Ok(())
}
