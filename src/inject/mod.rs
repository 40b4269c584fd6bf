//! `portcullis inject`: a mutating admission webhook (Kubernetes `admission.k8s.io/v1`) that adds
//! the portcullis sidecar to the pods that ask for it.
//!
//! The shape follows kube-rs' advice: the HTTPS handler in [`server`] only decodes an
//! `AdmissionReview`, calls the one pure function [`mutate()`], and encodes the answer. Everything
//! the webhook decides — whether a pod opts in, its identity, which probes move to the sidecar's
//! port, the JSONPatch itself — is in that function and the modules it calls, and is tested with
//! JSON fixtures without a cluster.
//!
//! | file | concept |
//! |---|---|
//! | [`args`] | the command-line flags and their `PORTCULLIS_…` environment variables |
//! | [`error`] | why a pod cannot be injected, worded for the person who created it |
//! | [`settings`] | the validated, cluster-wide settings [`mutate()`] works from |
//! | [`options`] | the pod's annotations, parsed into what this one pod asks for |
//! | [`probes`] | pointing the app's HTTP probes at the sidecar and exempting exactly their paths |
//! | [`sidecar`] | the sidecar container, its volumes, env, probes and security context |
//! | [`patch`] | building RFC 6902 JSONPatch operations on a pod |
//! | [`mutate`](mod@mutate) | the decision: skip, inject, deny, or allow with a warning |
//! | [`server`] | the HTTPS endpoint (`/mutate`, `/healthz`) on pingora, hot-reloaded certificate |
//!
//! It deliberately never talks to the API server: everything it needs arrives in the review or
//! in its flags, so it needs no RBAC and has no side effects (`sideEffects: None`).

pub mod args;
pub mod error;
pub mod mutate;
pub mod options;
pub mod patch;
pub mod probes;
pub mod server;
pub mod settings;
pub mod sidecar;

pub use args::{InjectArgs, LogFormat};
pub use error::InjectError;
pub use mutate::{Outcome, Route, SkipReason, Verdict, mutate};
pub use server::{StartError, run};
pub use settings::{InjectSettings, SidecarMode};
