//! `korvid ingest`: the only door into the pipeline. This stage serves the kube-apiserver audit
//! webhook and tails audit log files, and writes sanitised AuditEvents to Kafka; bad input goes
//! to the dead-letter topic.
//!
//! Entry point: [`run`].

pub mod audit;
pub mod audit_log;
pub mod sanitize;
pub mod scans;
mod settings;
mod webhook;

pub use settings::{AuditLogSettings, AuditWebhookSettings, IngestSettings};
pub use webhook::{AuditWebhook, run};
