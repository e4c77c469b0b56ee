//! `[ingest]` settings.

use std::path::PathBuf;

use korvid_common::settings::{
    SettingsError, Validate, require_non_empty, require_range, require_socket_addr,
};
use korvid_common::tls::ServerTlsSettings;
use serde::Deserialize;

/// `[ingest]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Cluster id stamped on every record (many clusters can share one pipeline).
    pub cluster: String,
    /// Key for the keyed hashes that replace secret values. Unset: a random key per process
    /// (hashes then only match within one run).
    pub redaction_key: Option<String>,
    /// The audit webhook.
    pub audit_webhook: AuditWebhookSettings,
    /// Audit log files to tail (`[[ingest.audit_logs]]`).
    pub audit_logs: Vec<AuditLogSettings>,
}

/// One audit log file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogSettings {
    /// The file kube-apiserver writes (`--audit-log-path`), or any file of audit events.
    pub path: PathBuf,
    /// How often to look for new lines and rotation.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_poll_ms() -> u64 {
    250
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            cluster: "default".into(),
            redaction_key: None,
            audit_webhook: AuditWebhookSettings::default(),
            audit_logs: Vec::new(),
        }
    }
}

/// `[ingest.audit_webhook]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditWebhookSettings {
    /// Serve the webhook.
    pub enabled: bool,
    /// Listen address.
    pub listen: String,
    /// Request path kube-apiserver posts to.
    pub path: String,
    /// Request path for Trivy/Grype JSON reports on the same server.
    pub scans_path: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Batches handled at once; more get 429 with Retry-After.
    pub max_in_flight: usize,
    /// Serve HTTPS (and optionally require client certificates).
    pub tls: Option<ServerTlsSettings>,
    /// File holding a token every request must present as `Authorization: Bearer <token>`.
    pub bearer_token_file: Option<PathBuf>,
}

impl Default for AuditWebhookSettings {
    fn default() -> Self {
        AuditWebhookSettings {
            enabled: true,
            listen: "127.0.0.1:9440".into(),
            path: "/audit/webhook".into(),
            scans_path: "/scans".into(),
            max_body_bytes: 16 << 20,
            max_in_flight: 32,
            tls: None,
            bearer_token_file: None,
        }
    }
}

impl Validate for IngestSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        require_non_empty("ingest.cluster", &self.cluster)?;
        if self.cluster.contains('/') {
            return Err(SettingsError::invalid(
                "ingest.cluster",
                "must not contain '/' (it is part of record keys)",
            ));
        }
        if let Some(k) = &self.redaction_key
            && k.len() < 16
        {
            return Err(SettingsError::invalid(
                "ingest.redaction_key",
                "must be at least 16 characters",
            ));
        }
        for (i, log) in self.audit_logs.iter().enumerate() {
            let key = format!("ingest.audit_logs[{i}]");
            require_range(&format!("{key}.poll_ms"), log.poll_ms, 10, 60_000)?;
            let dir = log.path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(SettingsError::invalid(
                    format!("{key}.path"),
                    format!("the directory of {} does not exist", log.path.display()),
                ));
            }
        }
        let w = &self.audit_webhook;
        require_socket_addr("ingest.audit_webhook.listen", &w.listen)?;
        if !w.path.starts_with('/') {
            return Err(SettingsError::invalid(
                "ingest.audit_webhook.path",
                "must start with '/'",
            ));
        }
        if !w.scans_path.starts_with('/') || w.scans_path == w.path {
            return Err(SettingsError::invalid(
                "ingest.audit_webhook.scans_path",
                "must start with '/' and differ from ingest.audit_webhook.path",
            ));
        }
        require_range(
            "ingest.audit_webhook.max_body_bytes",
            w.max_body_bytes,
            1024,
            1 << 30,
        )?;
        require_range(
            "ingest.audit_webhook.max_in_flight",
            w.max_in_flight,
            1,
            4096,
        )?;
        if let Some(tls) = &w.tls {
            tls.validate("ingest.audit_webhook.tls")?;
        }
        if let Some(f) = &w.bearer_token_file {
            let token = std::fs::read_to_string(f).map_err(|e| {
                SettingsError::invalid(
                    "ingest.audit_webhook.bearer_token_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            if token.trim().len() < 16 {
                return Err(SettingsError::invalid(
                    "ingest.audit_webhook.bearer_token_file",
                    "the token must be at least 16 characters",
                ));
            }
        }
        Ok(())
    }
}
