//! The flags of `portcullis inject`. Each has an environment variable `PORTCULLIS_<FLAG>`, so the
//! webhook's Deployment can configure it with a few `env` lines.
//!
//! [`InjectArgs::settings`] validates them into [`InjectSettings`]; a bad value is refused at
//! start with a message that names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::settings::{self, InjectSettings, SidecarMode};

pub use crate::cli::LogFormat;

/// Run the mutating admission webhook.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Address the HTTPS server listens on.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,

    /// The serving certificate chain (PEM), reloaded when it changes.
    #[arg(
        long,
        env = "PORTCULLIS_TLS_CERT",
        default_value = "/var/run/secrets/portcullis/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// The serving certificate's private key (PEM), reloaded with it.
    #[arg(
        long,
        env = "PORTCULLIS_TLS_KEY",
        default_value = "/var/run/secrets/portcullis/tls/tls.key"
    )]
    pub tls_key: PathBuf,

    /// Image of the injected sidecar, e.g. registry.example/portcullis:0.1.0.
    #[arg(long, env = "PORTCULLIS_SIDECAR_IMAGE")]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected sidecar.
    #[arg(long, env = "PORTCULLIS_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// SPIFFE trust domain of default identities: spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT.
    #[arg(long, env = "PORTCULLIS_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Keys Secret mounted into pods that do not annotate their own.
    #[arg(
        long,
        env = "PORTCULLIS_KEYS_SECRET",
        default_value = "portcullis-keys"
    )]
    pub keys_secret: String,

    /// Sidecar form for pods that do not annotate their own: native needs Kubernetes 1.29+.
    #[arg(long, env = "PORTCULLIS_SIDECAR_MODE", value_enum, default_value_t = SidecarMode::Native)]
    pub sidecar_mode: SidecarMode,

    /// Issuers the sidecar accepts (comma-separated) for pods that do not annotate their own.
    #[arg(long, env = "PORTCULLIS_ISSUER", value_delimiter = ',')]
    pub issuer: Vec<String>,

    /// Admit a pod that cannot be injected (with a warning) instead of denying it. The pod
    /// then runs without the sidecar: only for migrations you watch.
    #[arg(long, env = "PORTCULLIS_UNSAFE_FAIL_OPEN")]
    pub unsafe_fail_open: bool,

    /// The webhook's own namespace; pods there are never injected.
    #[arg(
        long,
        env = "PORTCULLIS_NAMESPACE",
        default_value = "portcullis-system"
    )]
    pub namespace: String,

    /// Log format.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// A flag with a value the webhook cannot work with.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct InvalidFlag {
    pub flag: &'static str,
    pub reason: String,
}

impl InjectArgs {
    /// Validates the flags into the settings the webhook injects with.
    pub fn settings(&self) -> Result<InjectSettings, InvalidFlag> {
        let invalid = |flag, reason: &str| InvalidFlag {
            flag,
            reason: reason.to_string(),
        };
        if self.sidecar_image.trim().is_empty() {
            return Err(invalid("sidecar-image", "must name an image"));
        }
        if !settings::is_trust_domain(&self.trust_domain) {
            return Err(invalid(
                "trust-domain",
                "use lowercase letters, digits, '.', '-', '_'",
            ));
        }
        if !settings::is_dns_subdomain(&self.keys_secret) {
            return Err(invalid(
                "keys-secret",
                "must be a valid Secret name (DNS-1123)",
            ));
        }
        if !settings::is_dns_subdomain(&self.namespace) {
            return Err(invalid("namespace", "must be a valid namespace name"));
        }

        let issuers: Vec<String> = self
            .issuer
            .iter()
            .map(|i| i.trim().to_string())
            .filter(|i| !i.is_empty())
            .collect();
        Ok(InjectSettings {
            sidecar_image: self.sidecar_image.trim().to_string(),
            image_pull_policy: self.image_pull_policy.clone(),
            trust_domain: self.trust_domain.clone(),
            keys_secret: self.keys_secret.clone(),
            sidecar_mode: self.sidecar_mode,
            issuers,
            unsafe_fail_open: self.unsafe_fail_open,
            own_namespace: self.namespace.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: InjectArgs,
    }

    fn parse(extra: &[&str]) -> Result<InjectArgs, clap::Error> {
        let mut argv = vec!["portcullis", "--sidecar-image", "portcullis:test"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn defaults_are_safe() -> Result<(), Box<dyn std::error::Error>> {
        let settings = parse(&[])?.settings()?;
        assert_eq!(settings.sidecar_mode, SidecarMode::Native);
        assert!(!settings.unsafe_fail_open);
        assert_eq!(settings.trust_domain, "cluster.local");
        assert_eq!(settings.keys_secret, "portcullis-keys");
        Ok(())
    }

    #[test]
    fn bad_trust_domain_names_the_flag() -> Result<(), Box<dyn std::error::Error>> {
        let error = parse(&["--trust-domain", "Prod:443"])?.settings().err();
        assert_eq!(error.map(|e| e.flag), Some("trust-domain"));
        Ok(())
    }

    #[test]
    fn issuers_split_on_commas() -> Result<(), Box<dyn std::error::Error>> {
        let settings = parse(&["--issuer", "a, b,,c"])?.settings()?;
        assert_eq!(settings.issuers, ["a", "b", "c"]);
        Ok(())
    }
}
