//! `korvid ingest`: the only door into the pipeline. This stage serves the kube-apiserver audit
//! webhook and writes sanitised AuditEvents to Kafka; bad input goes to the dead-letter topic.
//!
//! Entry point: [`run`].

pub mod audit;
pub mod sanitize;
mod settings;
mod webhook;

pub use settings::{AuditWebhookSettings, IngestSettings};
pub use webhook::{AuditWebhook, run};
