//! The plumbing every korvid service shares: layered settings, telemetry (logs, Prometheus
//! metrics, health endpoints, OTLP traces), graceful shutdown, Kafka clients with at-least-once
//! semantics and a dead-letter producer, and the embedded local broker.
//!
//! Service logic lives in the service crates; nothing here knows about audit events or rules.

#![warn(missing_docs)]

pub mod broker;
pub mod http_server;
pub mod kafka;
pub mod settings;
pub mod shutdown;
#[cfg(feature = "sql")]
pub mod sql;
pub mod telemetry;
pub mod tls;
pub mod trace_context;

pub use settings::{SettingsError, Validate};
pub use shutdown::Shutdown;
pub use telemetry::Telemetry;

/// Installs rustls' ring crypto provider for every HTTPS client in the process (reqwest is built
/// without a default one). Idempotent; call before building any HTTP client.
pub fn install_tls_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything a service needs from its surroundings, handed to each service's `run`.
#[derive(Clone)]
pub struct ServiceContext {
    /// Shared Kafka settings and topic names.
    pub kafka: kafka::KafkaContext,
    /// Metrics registry and health.
    pub telemetry: Telemetry,
    /// Cancelled when the process should stop.
    pub shutdown: Shutdown,
    /// Where services keep local state (checkpoints).
    pub data_dir: std::path::PathBuf,
}
