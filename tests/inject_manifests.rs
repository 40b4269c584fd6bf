//! The sidecar written by hand in `k8s/todo/deployment.yaml` is the one the webhook injects:
//! the todo pod, stripped of its sidecar, goes through `mutate`, and the two containers are
//! compared field by field. A change to one that forgets the other fails here.

#[path = "inject_common/mod.rs"]
mod common;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use portcullis::inject::{InjectSettings, Outcome, Route, mutate};
use serde_json::{Value, json};

fn hand_written() -> Result<Deployment> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/todo/deployment.yaml");
    let yaml = std::fs::read_to_string(path).context("reading k8s/todo/deployment.yaml")?;
    Ok(serde_saphyr::from_str(&yaml)?)
}

/// The pod the Deployment would create, without its sidecar, injected by the webhook.
fn injected(deployment: &Deployment) -> Result<(Container, Pod)> {
    let template = deployment.spec.template.clone();
    let mut spec = template.spec.context("no pod spec")?;
    let hand = spec
        .init_containers
        .take()
        .and_then(|c| c.into_iter().next())
        .context("no sidecar")?;
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| v.name != "portcullis-keys");
    }
    let mut pod = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: Some(spec),
        ..Pod::default()
    };
    pod.metadata.namespace = Some("todo".to_string());
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert("portcullis.dev/inject".into(), "true".into());

    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "22222222-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "todo",
            "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": serde_json::to_value(&pod)?,
            "dryRun": false,
        }
    });
    let settings = InjectSettings::new("portcullis:0.1.0");
    let verdict = mutate(&common::request(&review)?, Route::PodAnnotation, &settings);
    assert!(
        matches!(verdict.outcome, Outcome::Injected { .. }),
        "{:?}",
        verdict.outcome
    );
    let pod: Pod = serde_json::from_value(common::patched_pod(&review, &verdict.response)?)?;
    Ok((hand, pod))
}

fn env_without(container: &Container, skip: &[&str]) -> Vec<(String, Option<String>)> {
    let vars = container.env.as_deref().unwrap_or_default();
    let mut vars: Vec<_> = vars
        .iter()
        .filter(|v| !skip.contains(&v.name.as_str()))
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    vars.sort();
    vars
}

#[test]
fn hand_written_sidecar_matches_the_injected_one() -> Result<()> {
    let deployment = hand_written()?;
    let (hand, pod) = injected(&deployment)?;
    let spec = pod.spec.as_ref().context("no spec")?;
    let webhook = spec
        .init_containers
        .as_ref()
        .and_then(|c| c.first())
        .context("not injected")?;

    assert_eq!(hand.name, webhook.name);
    assert_eq!(hand.args, webhook.args);
    assert_eq!(hand.restart_policy, webhook.restart_policy);
    assert_eq!(hand.ports, webhook.ports);
    assert_eq!(hand.volume_mounts, webhook.volume_mounts);
    assert_eq!(hand.startup_probe, webhook.startup_probe);
    assert_eq!(hand.readiness_probe, webhook.readiness_probe);
    assert_eq!(hand.liveness_probe, webhook.liveness_probe);
    assert_eq!(hand.resources, webhook.resources);
    assert_eq!(hand.security_context, webhook.security_context);
    assert_eq!(
        hand.termination_message_policy,
        webhook.termination_message_policy
    );
    // The example adds an issuer and the public probe route by hand; the rest is identical.
    let per_example = ["PORTCULLIS_ISSUER", "PORTCULLIS_PUBLIC_PATH"];
    assert_eq!(
        env_without(&hand, &per_example),
        env_without(webhook, &per_example)
    );

    let volumes = |spec: &k8s_openapi::api::core::v1::PodSpec| -> Result<Value> {
        let keys = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "portcullis-keys");
        Ok(serde_json::to_value(keys.context("no keys volume")?)?)
    };
    let hand_spec = deployment.spec.template.spec.context("no pod spec")?;
    assert_eq!(volumes(&hand_spec)?, volumes(spec)?);
    Ok(())
}
