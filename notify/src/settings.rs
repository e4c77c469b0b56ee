//! `[notify]` settings.

use korvid_common::settings::{SettingsError, Validate, require_non_empty, require_range};
use serde::Deserialize;

/// `[notify]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// A fingerprint already notified is notified again only after this long.
    pub repeat_interval_ms: i64,
    /// Print alerts to standard output.
    pub stdout: bool,
    /// Write alerts to the alerts topic.
    pub alerts_topic: bool,
    /// Webhook receivers (`[[notify.webhooks]]`).
    pub webhooks: Vec<WebhookSinkSettings>,
    /// Findings below this severity (`low`, `medium`, `high`, `critical`) are not sent: they
    /// stay on the findings topic for queries. Low is what the graph model lowers routine rule
    /// hits to.
    pub min_severity: String,
}

impl NotifySettings {
    /// The parsed `min_severity` (validated at start-up).
    pub fn min_severity(&self) -> korvid_schemas::Severity {
        korvid_schemas::Severity::parse(&self.min_severity)
            .unwrap_or(korvid_schemas::Severity::Medium)
    }
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            repeat_interval_ms: 4 * 3600 * 1000,
            stdout: true,
            alerts_topic: true,
            webhooks: Vec::new(),
            min_severity: "medium".into(),
        }
    }
}

/// One webhook receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkSettings {
    /// Name used in logs, metrics and dead letters.
    pub name: String,
    /// `http://` or `https://` URL to POST alerts to.
    pub url: String,
    /// Secret for the `X-Korvid-Signature` HMAC-SHA256 header.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Attempts before the alert goes to the dead-letter topic.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_timeout() -> u64 {
    5_000
}

fn default_attempts() -> u32 {
    5
}

impl Validate for NotifySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        require_range(
            "notify.repeat_interval_ms",
            self.repeat_interval_ms,
            1_000,
            365 * 24 * 3600 * 1000,
        )?;
        if korvid_schemas::Severity::parse(&self.min_severity).is_none() {
            return Err(SettingsError::invalid(
                "notify.min_severity",
                format!(
                    "`{}`: expected low, medium, high or critical",
                    self.min_severity
                ),
            ));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = |k: &str| format!("notify.webhooks[{i}].{k}");
            require_non_empty(&key("name"), &w.name)?;
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(SettingsError::invalid(
                    key("url"),
                    format!("`{}` is not an http:// or https:// URL", w.url),
                ));
            }
            require_range(&key("timeout_ms"), w.timeout_ms, 100, 300_000)?;
            require_range(&key("max_attempts"), w.max_attempts, 1, 100)?;
        }
        Ok(())
    }
}
