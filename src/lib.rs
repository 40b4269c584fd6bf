//! portcullis: a sidecar that answers, for every request to one workload, *who is calling* and
//! *may they do this here*, so that the workload never parses, verifies or mints a token.
//!
//! # Architecture
//!
//! A request takes one path through these modules, top to bottom:
//!
//! | module | role |
//! |---|---|
//! | [`forward`] | plain HTTP: the lean HTTP/1.1 forwarder to the app (the hot path) |
//! | [`proxy`] | TLS and mTLS: pingora's `ProxyHttp` around the same pipeline |
//! | [`pipeline`] | the decision both engines share: public routes, credentials, rules, headers |
//! | [`auth`] | strips spoofable headers, finds the bearer token |
//! | [`verify`] | checks an HS256 token: signature, `exp`/`nbf`/`iat`, `iss`, `aud` |
//! | [`cache`] | remembers verified tokens per thread, tied to the key set and to `exp` |
//! | [`answer`] | maps every failure to its RFC 6750 status, `WWW-Authenticate` and JSON body |
//! | [`keys`] | the HMAC key set, loaded from a kubelet-style Secret volume |
//! | [`watch`] | directory watching (notify, debounce, rescan) shared by every reloadable file |
//! | [`admin`] | `/healthz`, `/readyz`, `/metrics` on the admin listener |
//! | [`metrics`] | the Prometheus registry and the counters the hot path touches |
//! | [`config`] | flags, environment and YAML merged into one validated [`config::Settings`] |
//! | [`mint`] | signing tokens, for `token mint` and the outbound side |
//! | [`tls`] | TLS material reloaded per handshake; client certificates and SPIFFE identities |
//! | [`rules`] | authorization rules (deny first, then allow), path normalisation |
//! | [`egress`], [`context`] | the outbound listener minting tokens; on-behalf-of handles |
//!
//! Around them sit the command-line tools: [`cli`] (argument definitions), [`demo`] and
//! [`echo`], [`tools`] (`token mint`, `token inspect`, `check`), [`inject`] (the admission
//! webhook), [`run`] (assembly and shutdown) and [`telemetry`] (logging set-up).

pub mod admin;
pub mod answer;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod context;
pub mod demo;
pub mod echo;
pub mod egress;
pub mod forward;
pub mod inject;
pub mod keys;
pub mod metrics;
pub mod mint;
pub mod pipeline;
pub mod proxy;
pub mod rules;
pub mod run;
pub mod telemetry;
pub mod tls;
pub mod tools;
pub mod verify;
pub mod watch;
