//! Why a pod cannot be injected. The message goes back to whoever created the pod (through the
//! API server) and to the webhook's log, so it names the annotation or field to fix.

/// A pod the webhook was asked to inject but cannot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("the review carries no pod object")]
    MissingObject,
    #[error("the review's namespace is missing")]
    MissingNamespace,
    #[error("the object is not a valid pod: {reason}")]
    NotAPod { reason: String },
    #[error("annotation {annotation}: {value:?} is invalid: {reason}")]
    InvalidAnnotation {
        annotation: &'static str,
        value: String,
        reason: String,
    },
    #[error("the pod has no containers")]
    NoContainers,
    #[error("kubectl.kubernetes.io/default-container names {name:?}, not a container of this pod")]
    UnknownDefaultContainer { name: String },
    #[error("port {port} is used by container {container:?}, but the sidecar needs it")]
    PortTaken { port: u16, container: String },
    #[error("the pod uses hostNetwork: the sidecar's ports would be the node's; add it by hand")]
    HostNetwork,
    #[error("volume {name:?} already exists, but the sidecar needs that name")]
    VolumeTaken { name: String },
    #[error("cannot encode the patch: {reason}")]
    Encode { reason: String },
}
