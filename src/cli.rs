//! Command-line definitions: every subcommand and flag, with its environment variable.
//!
//! Each flag of `portcullis run` also reads `PORTCULLIS_<FLAG>`; the same settings (and the
//! richer ones) come from the YAML file given with `--config`. Flags and environment override
//! the file; the merge and all validation live in [`crate::config`], not here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The `portcullis` command line.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar in front of one workload.
    Run(Box<RunArgs>),
    /// Start the sidecar in front of an embedded echo app with a fresh key, and show what to try.
    Demo(DemoArgs),
    /// Mint or inspect tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Validate a configuration and its keys without serving anything.
    Check(Box<RunArgs>),
    /// Run the mutating admission webhook that injects the sidecar into pods.
    Inject(Box<crate::inject::InjectArgs>),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when standard error is not a terminal, readable text when it is.
    Auto,
    /// One JSON object per line (what a container should use).
    Json,
    /// Human-readable lines.
    Text,
}

/// Settings of the sidecar. Every value is optional here so that the YAML file can supply it;
/// [`crate::config::Settings::resolve`] applies the defaults and checks the result.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// YAML file with the full set of settings; flags override it.
    #[arg(long, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This service's identity: every accepted token's `aud` must contain it.
    #[arg(long, env = "PORTCULLIS_IDENTITY")]
    pub identity: Option<String>,

    /// Address of the inbound listener [default: 0.0.0.0:8443].
    #[arg(long, env = "PORTCULLIS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Address of the app behind the sidecar [default: 127.0.0.1:8080].
    #[arg(long, env = "PORTCULLIS_UPSTREAM", value_name = "ADDR")]
    pub upstream: Option<String>,

    /// Address of the admin listener (/healthz, /readyz, /metrics) [default: 0.0.0.0:9901].
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// Directory of HMAC keys, laid out as a mounted Secret
    /// [default: /var/run/secrets/portcullis/keys].
    #[arg(long, env = "PORTCULLIS_KEYS_DIR", value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,

    /// An accepted token issuer (`iss`); repeat for several, or comma-separate in the env.
    #[arg(long = "issuer", env = "PORTCULLIS_ISSUER", value_delimiter = ',')]
    pub issuers: Vec<String>,

    /// A route that needs no token: `PATH`, `PATH*` (prefix) or `METHOD PATH`; repeatable.
    #[arg(
        long = "public-path",
        env = "PORTCULLIS_PUBLIC_PATH",
        value_delimiter = ','
    )]
    pub public_paths: Vec<String>,

    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds [default: 5].
    #[arg(long, env = "PORTCULLIS_LEEWAY", value_name = "SECONDS")]
    pub leeway: Option<u64>,

    /// Largest accepted token, in bytes [default: 8192].
    #[arg(long, env = "PORTCULLIS_MAX_TOKEN_BYTES", value_name = "BYTES")]
    pub max_token_bytes: Option<usize>,

    /// Largest accepted request head (request line and headers), in bytes [default: 32768].
    #[arg(long, env = "PORTCULLIS_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,

    /// Pass the `Authorization` header on to the app (off by default).
    #[arg(long, env = "PORTCULLIS_FORWARD_TOKEN", num_args = 0..=1, default_missing_value = "true")]
    pub forward_token: Option<bool>,

    /// Log format [default: auto].
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter in `tracing` syntax [default: warn,portcullis=info].
    #[arg(long, env = "PORTCULLIS_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Worker threads of the inbound proxy [default: 1].
    #[arg(long, env = "PORTCULLIS_THREADS")]
    pub threads: Option<usize>,

    /// Verified tokens remembered per worker thread (0 turns the cache off) [default: 1024].
    #[arg(long, env = "PORTCULLIS_TOKEN_CACHE")]
    pub token_cache: Option<usize>,

    /// Idle upstream connections kept for reuse [default: 128].
    #[arg(long, env = "PORTCULLIS_UPSTREAM_POOL_SIZE")]
    pub upstream_pool_size: Option<usize>,

    /// Timeout to connect to the app, in milliseconds [default: 1000].
    #[arg(
        long,
        env = "PORTCULLIS_UPSTREAM_CONNECT_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub upstream_connect_timeout_ms: Option<u64>,

    /// Seconds an idle upstream connection is kept [default: 60].
    #[arg(long, env = "PORTCULLIS_UPSTREAM_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub upstream_idle_timeout: Option<u64>,

    /// Longest wait for in-flight requests after SIGTERM, in seconds [default: 10].
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_TIMEOUT", value_name = "SECONDS")]
    pub shutdown_timeout: Option<u64>,

    /// How callers authenticate: `jwt`, `mtls`, `jwt+mtls` (both); a list means any of them
    /// [default: jwt].
    #[arg(long, env = "PORTCULLIS_AUTH", value_delimiter = ',')]
    pub auth: Vec<String>,

    /// PEM certificate chain of the inbound TLS listener (enables TLS).
    #[arg(long, env = "PORTCULLIS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the inbound TLS listener.
    #[arg(long, env = "PORTCULLIS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of the CAs that sign client certificates.
    #[arg(long, env = "PORTCULLIS_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Client certificates: off, optional or required [default: optional with a client CA].
    #[arg(long, env = "PORTCULLIS_TLS_CLIENT_AUTH", value_enum)]
    pub tls_client_auth: Option<crate::tls::ClientAuth>,

    /// Which certificate name is a peer's identity: spiffe (URI SAN) or dns [default: spiffe].
    #[arg(long, env = "PORTCULLIS_PEER_IDENTITY", value_enum)]
    pub peer_identity: Option<crate::tls::PeerIdentityKind>,

    /// Enable the outbound listener, at ADDR [default when given: 127.0.0.1:15001].
    #[arg(
        long,
        env = "PORTCULLIS_EGRESS_LISTEN",
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:15001"
    )]
    pub egress_listen: Option<String>,

    /// Lifetime of tokens minted for outbound calls, in seconds [default: 60].
    #[arg(long, env = "PORTCULLIS_EGRESS_TOKEN_TTL", value_name = "SECONDS")]
    pub egress_token_ttl: Option<u64>,

    /// Interval of the safety-net rescan of the keys directory, in seconds [default: 30].
    #[arg(long, env = "PORTCULLIS_RESCAN_INTERVAL", value_name = "SECONDS")]
    pub rescan_interval: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address of the demo sidecar.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Address of the demo admin listener.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_listen: String,
    /// Address of the embedded echo app.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub upstream: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a signed HS256 token.
    Mint(MintArgs),
    /// Show a token's header and claims and, given keys, whether this sidecar would accept it.
    Inspect(InspectArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MintArgs {
    /// Directory of keys, laid out as a mounted Secret.
    #[arg(long, env = "PORTCULLIS_KEYS_DIR", value_name = "DIR")]
    pub keys_dir: PathBuf,
    /// Key to sign with [default: the one named by `current`, else the greatest kid].
    #[arg(long)]
    pub kid: Option<String>,
    /// The `iss` claim.
    #[arg(long)]
    pub issuer: String,
    /// The `aud` claim; repeat for an array.
    #[arg(long = "audience", required = true)]
    pub audiences: Vec<String>,
    /// The `sub` claim.
    #[arg(long)]
    pub subject: String,
    /// Lifetime in seconds (negative mints an expired token, for tests).
    #[arg(long, default_value_t = 300, allow_negative_numbers = true)]
    pub ttl: i64,
    /// Roles, comma-separated, as the `roles` array claim.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Extra claim `NAME=VALUE`; VALUE is read as JSON when it parses, else as a string.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claims: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The token, or `-` to read it from standard input.
    pub token: String,
    /// Keys to check the signature with; without them only the contents are shown.
    #[arg(long, env = "PORTCULLIS_KEYS_DIR", value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// The identity this sidecar serves (required with --keys-dir).
    #[arg(long, env = "PORTCULLIS_IDENTITY")]
    pub identity: Option<String>,
    /// Accepted issuers (required with --keys-dir).
    #[arg(long = "issuer", env = "PORTCULLIS_ISSUER", value_delimiter = ',')]
    pub issuers: Vec<String>,
    /// Clock skew tolerated, in seconds.
    #[arg(long, default_value_t = 5)]
    pub leeway: u64,
}
