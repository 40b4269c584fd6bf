//! portcullis: a sidecar that answers, for every request to one workload, *who is calling* and
//! *may they do this here*, so that the workload never parses, verifies or mints a token.
//!
//! # Architecture
//!
//! This branch holds the parts that get portcullis into pods; the request path lives beside them
//! on the main branch.
//!
//! | module | role |
//! |---|---|
//! | [`watch`] | directory watching (notify, debounce, rescan) shared by every reloadable file |
//! | [`certs`] | a TLS certificate and key from a mounted Secret, hot-reloaded, per handshake |
//! | [`inject`] | `portcullis inject`: the mutating admission webhook that adds the sidecar |

pub mod certs;
pub mod inject;
pub mod watch;
