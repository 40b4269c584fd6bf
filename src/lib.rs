//! portcullis, reduced to the modules this branch works on; the lead's crate carries the full
//! architecture overview and module map.

pub mod rules;
pub mod watch;
