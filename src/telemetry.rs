//! Logging set-up: tracing-subscriber with JSON or readable text, and pingora's `log` output
//! bridged into the same stream.
//!
//! The default filter is quiet (`warn`, with portcullis itself at `info`), so a healthy sidecar
//! logs its lifecycle and its denials and nothing per allowed request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. A bad filter falls back to the default with a warning.
pub fn init(format: LogFormat, filter: &str) {
    let (filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new(crate::config::DEFAULT_LOG_LEVEL),
            Some(e.to_string()),
        ),
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init also routes the `log` crate (pingora) into tracing.
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
    if installed.is_err() {
        return;
    }
    if let Some(error) = bad {
        tracing::warn!(%error, "invalid --log-level, using the default filter");
    }
}
