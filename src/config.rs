//! One validated set of settings, merged from flags, environment and the YAML file.
//!
//! Precedence is flag, then environment (clap reads both), then the file, then the default.
//! Everything a request will rely on is checked here, at start, so that a mistake is a one-line
//! message naming the field and the fix rather than a surprise under load. This module does not
//! read keys: [`crate::keys`] does, and `portcullis check` calls both.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use crate::cli::{LogFormat, RunArgs};
use crate::egress::routes::{EgressFile, EgressSettings};
use crate::rules::{AuthorizationConfig, Policy};
use crate::tls::{ClientAuth, PeerIdentityKind, ServerTlsSettings};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9901";
pub const DEFAULT_KEYS_DIR: &str = "/var/run/secrets/portcullis/keys";
pub const DEFAULT_LOG_LEVEL: &str = "warn,portcullis=info";

/// Headers portcullis sets for the app; always removed from incoming requests first.
pub const IDENTITY_HEADERS: [&str; 6] = [
    "x-auth-subject",
    "x-auth-issuer",
    "x-auth-roles",
    "x-auth-claims",
    "x-auth-peer",
    "x-auth-actor",
];

/// A configuration mistake: which field, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    fn new(field: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.field, self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

/// The YAML file, field for field. Unknown fields are an error that names them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub identity: Option<String>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub admin_listen: Option<String>,
    pub keys_dir: Option<PathBuf>,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub public_paths: Vec<String>,
    pub leeway: Option<u64>,
    pub max_token_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub forward_token: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub threads: Option<usize>,
    pub token_cache: Option<usize>,
    pub upstream_pool_size: Option<usize>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_idle_timeout: Option<u64>,
    pub shutdown_timeout: Option<u64>,
    pub rescan_interval: Option<u64>,
    /// Claim name to header name, e.g. `email: x-auth-email`.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// How callers authenticate: `jwt`, `mtls`, `jwt+mtls`; any entry suffices.
    pub auth: Option<Vec<String>>,
    pub tls: Option<TlsFile>,
    pub egress: Option<EgressFile>,
    /// Authorization rules (see docs/rules.md).
    pub authorization: Option<AuthorizationConfig>,
}

/// `tls:` in the YAML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
    pub peer_identity: Option<PeerIdentityKind>,
}

/// One accepted way to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Jwt,
    Mtls,
    /// Both a valid token and a verified client certificate.
    JwtAndMtls,
}

impl AuthMode {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace(' ', "").as_str() {
            "jwt" => Some(Self::Jwt),
            "mtls" => Some(Self::Mtls),
            "jwt+mtls" | "mtls+jwt" => Some(Self::JwtAndMtls),
            _ => None,
        }
    }

    pub fn needs_mtls(self) -> bool {
        matches!(self, Self::Mtls | Self::JwtAndMtls)
    }
}

impl FileConfig {
    /// Reads and parses the YAML file; the error names the file and what the parser saw.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "--config",
                format!("cannot read {}: {e}", path.display()),
                "give the path of a readable YAML file",
            )
        })?;
        serde_saphyr::from_str(&text).map_err(|e| {
            ConfigError::new(
                "--config",
                format!("{}: {e}", path.display()),
                "correct the YAML; the README's configuration reference lists every field",
            )
        })
    }
}

/// A route that needs no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicPath {
    /// `None` matches every method.
    pub method: Option<String>,
    pub path: String,
    pub prefix: bool,
}

impl PublicPath {
    /// Parses `PATH`, `PATH*` or `METHOD PATH`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (method, path) = match spec.split_once(char::is_whitespace) {
            Some((m, p)) => (Some(m.trim()), p.trim()),
            None => (None, spec),
        };
        if let Some(m) = method
            && (m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            return Err(format!("{spec:?}: the method must be a word such as GET"));
        }
        if !path.starts_with('/') {
            return Err(format!("{spec:?}: the path must start with '/'"));
        }
        let (path, prefix) = match path.strip_suffix('*') {
            Some(p) => (p, true),
            None => (path, false),
        };
        if path.contains('*') {
            return Err(format!(
                "{spec:?}: '*' is only allowed at the end of the path"
            ));
        }
        Ok(Self {
            method: method.map(|m| m.to_ascii_uppercase()),
            path: path.to_string(),
            prefix,
        })
    }

    /// Whether a request with this method and path (no query) is on this route.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if let Some(m) = &self.method
            && !m.eq_ignore_ascii_case(method)
        {
            return false;
        }
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        }
    }
}

/// Everything `portcullis run` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub identity: String,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub admin_listen: SocketAddr,
    pub keys_dir: PathBuf,
    pub issuers: Vec<String>,
    pub public_paths: Vec<PublicPath>,
    pub leeway: u64,
    pub max_token_bytes: usize,
    pub max_header_bytes: usize,
    pub forward_token: bool,
    pub log_format: LogFormat,
    pub log_level: String,
    pub threads: usize,
    /// Verified-token cache entries per worker thread; 0 = off.
    pub token_cache: usize,
    pub upstream_pool_size: usize,
    pub upstream_connect_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub rescan_interval: Duration,
    /// (claim name, header name), in a stable order.
    pub claim_headers: Vec<(String, HeaderName)>,
    /// Accepted ways to authenticate; a request passes when it satisfies any of them.
    pub auth: Vec<AuthMode>,
    pub tls: Option<ServerTlsSettings>,
    pub egress: Option<EgressSettings>,
    /// Compiled authorization rules; empty means any authenticated caller passes.
    pub policy: Policy,
}

impl Settings {
    /// Merges flags over the file (if any) over the defaults, then validates.
    pub fn resolve(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &RunArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let identity = args.identity.clone().or(file.identity).unwrap_or_default();
        if identity.trim().is_empty() {
            return Err(ConfigError::new(
                "--identity",
                "this service's identity is required",
                "set --identity, PORTCULLIS_IDENTITY or `identity:` \
                 to the audience tokens name this service by",
            ));
        }
        let issuers = if args.issuers.is_empty() {
            file.issuers
        } else {
            args.issuers.clone()
        };
        let issuers: Vec<String> = issuers
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if issuers.is_empty() {
            return Err(ConfigError::new(
                "--issuer",
                "at least one accepted issuer is required",
                "set --issuer (repeatable), PORTCULLIS_ISSUER (comma-separated) or `issuers:`",
            ));
        }
        let public_specs = if args.public_paths.is_empty() {
            file.public_paths
        } else {
            args.public_paths.clone()
        };
        let public_paths = public_specs
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| PublicPath::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ConfigError::new(
                    "--public-path",
                    e,
                    "write PATH, PATH* or METHOD PATH, e.g. 'GET /healthz'",
                )
            })?;

        let max_token_bytes = args
            .max_token_bytes
            .or(file.max_token_bytes)
            .unwrap_or(8192);
        if !(64..=1 << 20).contains(&max_token_bytes) {
            return Err(ConfigError::new(
                "--max-token-bytes",
                format!("{max_token_bytes} is out of range"),
                "choose between 64 and 1048576",
            ));
        }
        let max_header_bytes = args
            .max_header_bytes
            .or(file.max_header_bytes)
            .unwrap_or(32768);
        if max_header_bytes < max_token_bytes + 256 {
            return Err(ConfigError::new(
                "--max-header-bytes",
                format!("{max_header_bytes} leaves no room for a {max_token_bytes}-byte token"),
                "make it larger than --max-token-bytes plus the other headers",
            ));
        }
        let token_cache = args.token_cache.or(file.token_cache).unwrap_or(1024);
        if token_cache > 1 << 20 {
            return Err(ConfigError::new(
                "--token-cache",
                format!("{token_cache} is out of range"),
                "use at most 1048576 entries, or 0 to turn the cache off",
            ));
        }
        let threads = args.threads.or(file.threads).unwrap_or(1);
        if !(1..=64).contains(&threads) {
            return Err(ConfigError::new(
                "--threads",
                format!("{threads} is out of range"),
                "choose between 1 and 64 (1 or 2 suit a sidecar)",
            ));
        }
        let rescan = args.rescan_interval.or(file.rescan_interval).unwrap_or(30);
        if rescan == 0 {
            return Err(ConfigError::new(
                "--rescan-interval",
                "0 would rescan continuously",
                "choose at least 1 second",
            ));
        }
        let connect_ms = args
            .upstream_connect_timeout_ms
            .or(file.upstream_connect_timeout_ms)
            .unwrap_or(1000);
        if connect_ms == 0 {
            return Err(ConfigError::new(
                "--upstream-connect-timeout-ms",
                "0 would fail every connection",
                "choose at least 1",
            ));
        }

        let auth = auth_modes(if args.auth.is_empty() {
            file.auth.unwrap_or_default()
        } else {
            args.auth.clone()
        })?;
        let tls = tls_settings(args, file.tls.unwrap_or_default(), &auth)?;
        let policy = match &file.authorization {
            Some(cfg) => Policy::compile(cfg).map_err(|e| {
                ConfigError::new(
                    "authorization",
                    e.to_string(),
                    "correct the rule; docs/rules.md lists every field",
                )
            })?,
            None => Policy::default(),
        };

        Ok(Self {
            identity: identity.trim().to_string(),
            listen: addr(
                "--listen",
                args.listen.clone().or(file.listen),
                DEFAULT_LISTEN,
            )?,
            upstream: addr(
                "--upstream",
                args.upstream.clone().or(file.upstream),
                DEFAULT_UPSTREAM,
            )?,
            admin_listen: addr(
                "--admin-listen",
                args.admin_listen.clone().or(file.admin_listen),
                DEFAULT_ADMIN_LISTEN,
            )?,
            keys_dir: args
                .keys_dir
                .clone()
                .or(file.keys_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYS_DIR)),
            issuers,
            public_paths,
            leeway: args.leeway.or(file.leeway).unwrap_or(5),
            max_token_bytes,
            max_header_bytes,
            forward_token: args.forward_token.or(file.forward_token).unwrap_or(false),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Auto),
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string()),
            threads,
            token_cache,
            upstream_pool_size: args
                .upstream_pool_size
                .or(file.upstream_pool_size)
                .unwrap_or(128),
            upstream_connect_timeout: Duration::from_millis(connect_ms),
            upstream_idle_timeout: Duration::from_secs(
                args.upstream_idle_timeout
                    .or(file.upstream_idle_timeout)
                    .unwrap_or(60),
            ),
            shutdown_timeout: Duration::from_secs(
                args.shutdown_timeout
                    .or(file.shutdown_timeout)
                    .unwrap_or(10),
            ),
            rescan_interval: Duration::from_secs(rescan),
            claim_headers: claim_headers(file.claim_headers)?,
            auth,
            tls,
            egress: EgressSettings::resolve(
                file.egress,
                args.egress_listen.clone(),
                args.egress_token_ttl,
            )?,
            policy,
        })
    }
}

fn addr(field: &str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    text.trim().parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("{text:?} is not an IP:PORT address"),
            format!("write it like {default}"),
        )
    })
}

fn auth_modes(specs: Vec<String>) -> Result<Vec<AuthMode>, ConfigError> {
    if specs.is_empty() {
        return Ok(vec![AuthMode::Jwt]);
    }
    specs
        .iter()
        .map(|s| {
            AuthMode::parse(s).ok_or_else(|| {
                ConfigError::new(
                    "--auth",
                    format!("{s:?} is not an authentication mode"),
                    "use jwt, mtls or jwt+mtls",
                )
            })
        })
        .collect()
}

fn tls_settings(
    args: &RunArgs,
    file: TlsFile,
    auth: &[AuthMode],
) -> Result<Option<ServerTlsSettings>, ConfigError> {
    let cert = args.tls_cert.clone().or(file.cert_file);
    let key = args.tls_key.clone().or(file.key_file);
    let client_ca = args.tls_client_ca.clone().or(file.client_ca_file);
    let needs_mtls = auth.iter().any(|m| m.needs_mtls());
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if needs_mtls => {
            return Err(ConfigError::new(
                "--auth",
                "mtls needs a TLS listener",
                "set --tls-cert, --tls-key and --tls-client-ca",
            ));
        }
        (None, None) if client_ca.is_some() => {
            return Err(ConfigError::new(
                "--tls-client-ca",
                "needs --tls-cert and --tls-key",
                "set both, or remove the client CA",
            ));
        }
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "--tls-key",
                "a certificate without its key",
                "set --tls-key (tls.key_file)",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "--tls-cert",
                "a key without its certificate",
                "set --tls-cert (tls.cert_file)",
            ));
        }
    };
    let default_auth = if client_ca.is_some() {
        ClientAuth::Optional
    } else {
        ClientAuth::Off
    };
    let client_auth = args
        .tls_client_auth
        .or(file.client_auth)
        .unwrap_or(default_auth);
    if client_auth != ClientAuth::Off && client_ca.is_none() {
        return Err(ConfigError::new(
            "--tls-client-auth",
            "client certificates need a CA to verify them",
            "set --tls-client-ca",
        ));
    }
    if needs_mtls && client_auth == ClientAuth::Off {
        return Err(ConfigError::new(
            "--tls-client-auth",
            "is off but --auth needs mtls",
            "set optional or required",
        ));
    }
    Ok(Some(ServerTlsSettings {
        cert_file: cert,
        key_file: key,
        client_ca_file: client_ca,
        client_auth,
        peer_identity: args
            .peer_identity
            .or(file.peer_identity)
            .unwrap_or(PeerIdentityKind::Spiffe),
    }))
}

fn claim_headers(map: BTreeMap<String, String>) -> Result<Vec<(String, HeaderName)>, ConfigError> {
    let mut out = Vec::with_capacity(map.len());
    for (claim, header) in map {
        let name = HeaderName::from_bytes(header.trim().as_bytes()).map_err(|_| {
            ConfigError::new(
                "claim_headers",
                format!("{header:?} is not a valid header name"),
                "use lowercase letters, digits and '-'",
            )
        })?;
        let reserved = IDENTITY_HEADERS.contains(&name.as_str())
            || name == http::header::AUTHORIZATION
            || name == http::header::HOST;
        if reserved {
            return Err(ConfigError::new(
                "claim_headers",
                format!("{name} is set by portcullis itself or is a core header"),
                "map the claim to another header, e.g. x-auth-email",
            ));
        }
        out.push((claim, name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            identity: Some("todos".into()),
            issuers: vec!["https://issuer".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::merge(&args(), FileConfig::default()).expect("valid");
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.upstream.to_string(), DEFAULT_UPSTREAM);
        assert_eq!(s.leeway, 5);
        assert_eq!(s.max_token_bytes, 8192);
        assert!(!s.forward_token);
    }

    #[test]
    fn missing_identity_names_the_flag() {
        let mut a = args();
        a.identity = None;
        let e = Settings::merge(&a, FileConfig::default()).expect_err("must fail");
        assert_eq!(e.field, "--identity");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig =
            serde_saphyr::from_str("identity: file\nleeway: 9\nissuers: [a]\n").expect("yaml");
        let s = Settings::merge(&args(), file).expect("valid");
        assert_eq!(s.identity, "todos");
        assert_eq!(s.leeway, 9);
        assert_eq!(s.issuers, vec!["https://issuer".to_string()]);
    }

    #[test]
    fn unknown_yaml_field_is_named() {
        let e = serde_saphyr::from_str::<FileConfig>("identity: x\nlistne: 1\n")
            .expect_err("must fail");
        assert!(e.to_string().contains("listne"), "{e}");
    }

    #[test]
    fn public_path_forms_parse() {
        let exact = PublicPath::parse("/healthz").expect("exact");
        assert!(exact.matches("GET", "/healthz") && !exact.matches("GET", "/healthz/x"));
        let prefix = PublicPath::parse("/static/*").expect("prefix");
        assert!(prefix.matches("POST", "/static/a.css") && !prefix.matches("GET", "/static"));
        let method = PublicPath::parse("get /ready").expect("method");
        assert!(method.matches("GET", "/ready") && !method.matches("POST", "/ready"));
        assert!(PublicPath::parse("healthz").is_err());
        assert!(PublicPath::parse("/a*/b").is_err());
    }

    #[test]
    fn identity_header_cannot_be_a_claim_target() {
        let file: FileConfig =
            serde_saphyr::from_str("claim_headers: {email: x-auth-subject}\n").expect("yaml");
        let e = Settings::merge(&args(), file).expect_err("must fail");
        assert_eq!(e.field, "claim_headers");
    }
}
