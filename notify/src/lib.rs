//! `korvid notify`: turns findings into alerts people can trust. Findings are deduplicated by
//! fingerprint (state kept on a compacted topic, so restarts never re-notify), and each new
//! alert fans out to its sinks (stdout, signed webhooks, the alerts topic) with retries and a
//! dead-letter path.
//!
//! Entry point: [`run`].

pub mod dedup;
mod service;
mod settings;
pub mod sinks;

pub use service::run;
pub use settings::{NotifySettings, WebhookSinkSettings};
