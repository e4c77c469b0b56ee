//! `korvid ingest`: the only door into the pipeline. This stage serves the kube-apiserver audit
//! webhook, tails audit log files (self-managed, EKS, GKE and AKS formats), watches the
//! Kubernetes API, takes Trivy/Grype reports over HTTP or from a directory, and imports
//! snapshots; it writes sanitised records to Kafka, and bad input goes to the dead-letter topic.
//!
//! Entry point: [`run`].

pub mod audit;
pub mod audit_log;
pub mod kube_watch;
pub mod managed;
pub mod objects;
pub mod sanitize;
pub mod scan_dir;
pub mod scans;
mod settings;
pub mod snapshot;
mod webhook;

pub use settings::{
    AuditLogSettings, AuditWebhookSettings, DEFAULT_KINDS, IngestSettings, KindSpec,
    KubernetesSettings, ScanDirSettings,
};
pub use webhook::{AuditWebhook, run};
