//! Prometheus metrics: decisions by reason, request latency, key reloads and key use.
//!
//! The hot path only touches pre-resolved counters and one histogram, never a label lookup.
//! Figures the key store already counts (reloads, per-kid use) are copied into the registry
//! when `/metrics` is scraped, so verification itself does no metrics work beyond one atomic.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::keys::KeyStore;
use crate::tls::ServerTls;

/// Every reason a request can be decided with, for pre-resolving counters.
pub const REASONS: [(&str, &str); 22] = [
    ("allow", "verified"),
    ("allow", "public"),
    ("allow", "dry_run"),
    ("deny", "missing"),
    ("deny", "invalid_request"),
    ("deny", "too_large"),
    ("deny", "malformed"),
    ("deny", "bad_algorithm"),
    ("deny", "bad_crit"),
    ("deny", "unknown_key"),
    ("deny", "bad_signature"),
    ("deny", "expired"),
    ("deny", "not_yet_valid"),
    ("deny", "issued_in_future"),
    ("deny", "missing_claim"),
    ("deny", "wrong_issuer"),
    ("deny", "wrong_audience"),
    ("deny", "forbidden"),
    ("error", "no_keys"),
    ("deny", "head_too_large"),
    ("deny", "no_client_certificate"),
    ("deny", "bad_path"),
];

/// The registry and the handles the request path uses.
pub struct Metrics {
    registry: Registry,
    decisions: HashMap<&'static str, IntCounter>,
    pub duration: Histogram,
    keys_loaded: IntGauge,
    reloads: IntCounter,
    reload_failures: IntCounter,
    key_verifications: IntCounterVec,
    key_last_used: IntGaugeVec,
    policy_denials: IntCounterVec,
    tls_reloads: IntCounter,
    tls_reload_failures: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Inbound requests by decision and reason",
            ),
            &["decision", "reason"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request head to response end",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
        )?;
        let keys_loaded = IntGauge::new("portcullis_keys_loaded", "Keys in the serving key set")?;
        let reloads =
            IntCounter::new("portcullis_key_reloads_total", "Key set updates swapped in")?;
        let reload_failures = IntCounter::new(
            "portcullis_key_reload_failures_total",
            "Key set updates refused (the old set kept serving)",
        )?;
        let key_verifications = IntCounterVec::new(
            Opts::new(
                "portcullis_key_verifications_total",
                "Tokens verified, by kid",
            ),
            &["kid"],
        )?;
        let key_last_used = IntGaugeVec::new(
            Opts::new(
                "portcullis_key_last_used_timestamp_seconds",
                "When a kid last verified a token",
            ),
            &["kid"],
        )?;
        registry.register(Box::new(decisions_vec.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(keys_loaded.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(reload_failures.clone()))?;
        registry.register(Box::new(key_verifications.clone()))?;
        registry.register(Box::new(key_last_used.clone()))?;
        let policy_denials = IntCounterVec::new(
            Opts::new(
                "portcullis_policy_denials_total",
                "Requests the rules denied (or would deny, in a dry run)",
            ),
            &["rule", "dry_run"],
        )?;
        registry.register(Box::new(policy_denials.clone()))?;
        let tls_reloads = IntCounter::new(
            "portcullis_tls_reloads_total",
            "TLS certificate updates swapped in",
        )?;
        let tls_reload_failures = IntCounter::new(
            "portcullis_tls_reload_failures_total",
            "TLS certificate updates refused (the old certificate kept serving)",
        )?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(tls_reload_failures.clone()))?;

        let decisions = REASONS
            .iter()
            .map(|(decision, reason)| {
                (
                    *reason,
                    decisions_vec.with_label_values(&[decision, reason]),
                )
            })
            .collect();
        Ok(Arc::new(Self {
            registry,
            decisions,
            duration,
            keys_loaded,
            reloads,
            reload_failures,
            key_verifications,
            key_last_used,
            policy_denials,
            tls_reloads,
            tls_reload_failures,
        }))
    }

    /// Counts one decision; `reason` is one of [`REASONS`].
    pub fn decided(&self, reason: &str) {
        if let Some(counter) = self.decisions.get(reason) {
            counter.inc();
        }
    }

    /// Counts a policy denial by the rule (or "no allow rule matched") that caused it.
    pub fn policy_denied(&self, rule: &str, dry_run: bool) {
        self.policy_denials
            .with_label_values(&[rule, if dry_run { "true" } else { "false" }])
            .inc();
    }

    /// Prometheus text exposition, after copying the key store's own counters in.
    pub fn render(&self, keys: &KeyStore, tls: Option<&ServerTls>) -> Vec<u8> {
        self.sync_keys(keys);
        if let Some(tls) = tls {
            use std::sync::atomic::Ordering::Relaxed;
            catch_up(&self.tls_reloads, tls.reloads.load(Relaxed));
            catch_up(&self.tls_reload_failures, tls.reload_failures.load(Relaxed));
        }
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        out
    }

    fn sync_keys(&self, keys: &KeyStore) {
        use std::sync::atomic::Ordering::Relaxed;
        self.keys_loaded
            .set(keys.current().map(|s| s.len() as i64).unwrap_or(0));
        catch_up(&self.reloads, keys.reloads.load(Relaxed));
        catch_up(&self.reload_failures, keys.reload_failures.load(Relaxed));
        for (kid, usage) in keys.usage() {
            catch_up(
                &self.key_verifications.with_label_values(&[&kid]),
                usage.verifications.load(Relaxed),
            );
            let last = usage.last_used_unix.load(Relaxed);
            if last > 0 {
                self.key_last_used
                    .with_label_values(&[&kid])
                    .set(last as i64);
            }
        }
    }
}

/// Raises a counter to `total` (counters only go up; the source only goes up too).
fn catch_up(counter: &IntCounter, total: u64) {
    let have = counter.get();
    if total > have {
        counter.inc_by(total - have);
    }
}
