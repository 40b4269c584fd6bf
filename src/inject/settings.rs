//! The cluster-wide settings the webhook injects with, validated once at start.
//!
//! These come from [`super::InjectArgs`]; tests build them directly. Per-pod choices live in
//! [`super::options`] instead.

use std::fmt;
use std::str::FromStr;

/// Where the sidecar goes in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29): starts before the
    /// app, stops after it.
    Native,
    /// A regular container next to the app, for older clusters; start and stop order are not
    /// guaranteed.
    Classic,
}

impl fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Classic => "classic",
        })
    }
}

impl FromStr for SidecarMode {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        match value {
            "native" => Ok(Self::Native),
            "classic" => Ok(Self::Classic),
            _ => Err(()),
        }
    }
}

/// Everything [`super::mutate()`] needs besides the review itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSettings {
    /// The image of the injected sidecar, e.g. `registry.example/portcullis:0.1.0`.
    pub sidecar_image: String,
    /// Its `imagePullPolicy`.
    pub image_pull_policy: String,
    /// The SPIFFE trust domain of default identities (`spiffe://<trust-domain>/ns/…/sa/…`).
    pub trust_domain: String,
    /// The keys Secret a pod gets unless it names its own.
    pub keys_secret: String,
    /// Native or classic sidecar, unless the pod asks otherwise.
    pub sidecar_mode: SidecarMode,
    /// Issuers the sidecar accepts unless the pod names its own; empty leaves the sidecar's
    /// default.
    pub issuers: Vec<String>,
    /// Allow (with a warning) a pod that cannot be injected instead of denying it.
    pub unsafe_fail_open: bool,
    /// The webhook's own namespace, never injected.
    pub own_namespace: String,
}

impl InjectSettings {
    /// Settings with the defaults of the command line, for tests and embedding.
    pub fn new(sidecar_image: impl Into<String>) -> Self {
        Self {
            sidecar_image: sidecar_image.into(),
            image_pull_policy: "IfNotPresent".to_string(),
            trust_domain: "cluster.local".to_string(),
            keys_secret: "portcullis-keys".to_string(),
            sidecar_mode: SidecarMode::Native,
            issuers: Vec::new(),
            unsafe_fail_open: false,
            own_namespace: "portcullis-system".to_string(),
        }
    }
}

/// Whether `value` is a valid SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`.
pub fn is_trust_domain(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Whether `value` is a DNS-1123 subdomain, the rule for Secret, ConfigMap and namespace names.
pub fn is_dns_subdomain(value: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= 253
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_rules_follow_spiffe() {
        assert!(is_trust_domain("cluster.local"));
        assert!(is_trust_domain("prod-eu_1.example"));
        assert!(!is_trust_domain(""));
        assert!(!is_trust_domain("Cluster.Local"));
        assert!(!is_trust_domain("cluster.local:443"));
    }

    #[test]
    fn secret_names_follow_dns_1123() {
        assert!(is_dns_subdomain("portcullis-keys"));
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain(""));
        assert!(!is_dns_subdomain("-keys"));
        assert!(!is_dns_subdomain("Keys"));
        assert!(!is_dns_subdomain("keys/../x"));
    }
}
