//! `[notify]` settings: grouping timers, the policy file, and the sinks.

use std::path::PathBuf;

use korvid_common::settings::{SettingsError, Validate, require_non_empty, require_range};
use korvid_schemas::Severity;
use serde::Deserialize;

use crate::engine::{GroupLabel, Grouping};
use crate::sinks::worker::DeliverySettings;

/// Which clock drives grouping timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// The wall clock: for a live pipeline.
    Wall,
    /// The findings' own times (the highest seen so far; wall time passes only after
    /// `idle_ms` without findings): for replaying history, so it groups as it happened.
    Findings,
}

/// `[notify]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// The security policy file (exceptions, silences, routing tree); see docs/notify.md.
    /// Without it, every alert at or above `min_severity` goes to every sink.
    pub policy: Option<PathBuf>,
    /// Findings below this severity (`low`, `medium`, `high`, `critical`) are not sent: they
    /// stay on the findings topic and in the lake. Low is what the graph model lowers routine
    /// rule hits to. The routing tree's root minimum defaults to this.
    pub min_severity: String,
    /// What groups alerts into one notification: cluster, namespace, kind, subject, rule,
    /// tactic, severity, fingerprint.
    pub group_by: Vec<GroupLabel>,
    /// Wait after a group appears, to gather its first alerts into one notification.
    pub group_wait_ms: i64,
    /// Least time between two notifications of a group that changed.
    pub group_interval_ms: i64,
    /// A group still firing unchanged is notified again after this long.
    pub repeat_interval_ms: i64,
    /// An alert with no finding for this long is resolved.
    pub resolve_timeout_ms: i64,
    /// `wall` or `findings` (see [`Clock`]).
    pub clock: Clock,
    /// With `clock = "findings"`: wall time without findings after which the clock moves on
    /// by itself (so the last groups still resolve).
    pub idle_ms: i64,
    /// How often timers are checked.
    pub tick_ms: u64,
    /// Print alerts to standard output (sink `stdout`).
    pub stdout: bool,
    /// Write alerts to the alerts topic (sink `alerts`).
    pub alerts_topic: bool,
    /// Webhook receivers, the short form of `[[notify.sinks]] kind = "webhook"`.
    pub webhooks: Vec<WebhookSinkSettings>,
    /// Every other sink (`[[notify.sinks]]`, `kind` = webhook, slack, teams, pagerduty,
    /// splunk_hec, elasticsearch, ocsf, loki, kafka, syslog, email).
    pub sinks: Vec<SinkSettings>,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            policy: None,
            min_severity: "medium".into(),
            group_by: vec![GroupLabel::Cluster, GroupLabel::Subject],
            group_wait_ms: 50,
            group_interval_ms: 60_000,
            repeat_interval_ms: 4 * 3600 * 1000,
            resolve_timeout_ms: 15 * 60 * 1000,
            clock: Clock::Wall,
            idle_ms: 10_000,
            tick_ms: 250,
            stdout: true,
            alerts_topic: true,
            webhooks: Vec::new(),
            sinks: Vec::new(),
        }
    }
}

impl NotifySettings {
    /// The parsed `min_severity` (validated at start-up).
    pub fn min_severity(&self) -> Severity {
        Severity::parse(&self.min_severity).unwrap_or(Severity::Medium)
    }

    /// The grouping timers.
    pub fn grouping(&self) -> Grouping {
        Grouping {
            group_by: self.group_by.clone(),
            group_wait: self.group_wait_ms,
            group_interval: self.group_interval_ms,
            repeat_interval: self.repeat_interval_ms,
            resolve_timeout: self.resolve_timeout_ms,
        }
    }

    /// Every sink's name, in configuration order.
    pub fn sink_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.stdout {
            names.push("stdout".to_string());
        }
        if self.alerts_topic {
            names.push("alerts".to_string());
        }
        names.extend(self.webhooks.iter().map(|w| w.name.clone()));
        names.extend(self.sinks.iter().map(|s| s.name().to_string()));
        names
    }
}

/// One webhook receiver (`[[notify.webhooks]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// `http://` or `https://` URL to POST alerts to.
    pub url: String,
    /// Secret for the `X-Korvid-Signature` HMAC-SHA256 header.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Attempts before the alert goes to the dead-letter topic (0: until
    /// `delivery.give_up_after_ms`).
    #[serde(default)]
    pub max_attempts: u32,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

fn default_timeout() -> u64 {
    5_000
}

/// One sink (`[[notify.sinks]]`), by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkSettings {
    /// A signed JSON webhook.
    Webhook(WebhookSinkSettings),
    /// A Slack incoming webhook (grouped, 1 message/s by default).
    Slack(UrlSinkSettings),
    /// A Microsoft Teams workflow / incoming webhook (grouped, Adaptive Card).
    Teams(UrlSinkSettings),
    /// PagerDuty Events API v2.
    Pagerduty(PagerDutySettings),
    /// Splunk HTTP Event Collector.
    SplunkHec(SplunkHecSettings),
    /// Elasticsearch or OpenSearch `_bulk`, ECS documents.
    Elasticsearch(ElasticsearchSettings),
    /// OCSF Detection Findings POSTed as JSON.
    Ocsf(OcsfSettings),
    /// Grafana Loki push API.
    Loki(LokiSettings),
    /// Another Kafka topic.
    Kafka(KafkaSinkSettings),
    /// Syslog (RFC 5424) over UDP, TCP or TLS, JSON or CEF.
    Syslog(crate::sinks::SyslogSettings),
    /// Email through an SMTP relay (grouped).
    Email(crate::sinks::EmailSettings),
}

impl SinkSettings {
    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            SinkSettings::Webhook(s) => &s.name,
            SinkSettings::Slack(s) | SinkSettings::Teams(s) => &s.name,
            SinkSettings::Pagerduty(s) => &s.name,
            SinkSettings::SplunkHec(s) => &s.name,
            SinkSettings::Elasticsearch(s) => &s.name,
            SinkSettings::Ocsf(s) => &s.name,
            SinkSettings::Loki(s) => &s.name,
            SinkSettings::Kafka(s) => &s.name,
            SinkSettings::Syslog(s) => &s.name,
            SinkSettings::Email(s) => &s.name,
        }
    }
}

/// A sink that needs only a URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSinkSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// The webhook URL.
    pub url: String,
    /// PEM CA bundle to trust for `https://` (private CAs).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

/// PagerDuty Events v2.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutySettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// The integration's routing key.
    pub routing_key: String,
    /// The Events API endpoint.
    #[serde(default = "pagerduty_url")]
    pub url: String,
    /// PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

fn pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

/// Splunk HEC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkHecSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// Collector base URL (`https://splunk:8088`) or the full event endpoint.
    pub url: String,
    /// The HEC token.
    pub token: String,
    /// Target index (else the token's default).
    #[serde(default)]
    pub index: Option<String>,
    /// Sourcetype (default `korvid:alert`).
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

/// Elasticsearch / OpenSearch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// Cluster base URL.
    pub url: String,
    /// Index or data stream (default `korvid-alerts`).
    #[serde(default = "es_index")]
    pub index: String,
    /// `ApiKey <base64>` credentials.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Basic-auth user (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

fn es_index() -> String {
    "korvid-alerts".into()
}

/// OCSF over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcsfSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// Collector URL.
    pub url: String,
    /// Extra headers (authentication).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

/// Loki.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LokiSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// Loki base URL.
    pub url: String,
    /// Tenant (`X-Scope-OrgID`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

/// A Kafka topic on the same cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// Topic; it must exist (or the broker must create topics on first use).
    pub topic: String,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

fn require_url(key: &str, url: &str) -> Result<(), SettingsError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(SettingsError::invalid(
            key,
            format!("`{url}` is not an http:// or https:// URL"),
        ))
    }
}

fn require_file(key: &str, path: Option<&PathBuf>) -> Result<(), SettingsError> {
    match path {
        Some(p) if !p.is_file() => Err(SettingsError::invalid(
            key,
            format!("{} is not a readable file", p.display()),
        )),
        _ => Ok(()),
    }
}

impl Validate for NotifySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        const YEAR: i64 = 365 * 24 * 3600 * 1000;
        require_range("notify.group_wait_ms", self.group_wait_ms, 0, YEAR)?;
        require_range("notify.group_interval_ms", self.group_interval_ms, 1, YEAR)?;
        require_range(
            "notify.repeat_interval_ms",
            self.repeat_interval_ms,
            1_000,
            YEAR,
        )?;
        require_range(
            "notify.resolve_timeout_ms",
            self.resolve_timeout_ms,
            1_000,
            YEAR,
        )?;
        require_range("notify.idle_ms", self.idle_ms, 0, YEAR)?;
        require_range("notify.tick_ms", self.tick_ms, 10, 60_000)?;
        if self.group_by.is_empty() {
            return Err(SettingsError::invalid(
                "notify.group_by",
                format!("needs at least one of {}", GroupLabel::NAMES),
            ));
        }
        if Severity::parse(&self.min_severity).is_none() {
            return Err(SettingsError::invalid(
                "notify.min_severity",
                format!(
                    "`{}`: expected low, medium, high or critical",
                    self.min_severity
                ),
            ));
        }
        require_file("notify.policy", self.policy.as_ref())?;
        let mut seen = std::collections::BTreeSet::new();
        for name in self.sink_names() {
            if !seen.insert(name.clone()) {
                return Err(SettingsError::invalid(
                    "notify.sinks",
                    format!(
                        "two sinks are named `{name}` (stdout and alerts are taken when enabled)"
                    ),
                ));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            validate_webhook(&format!("notify.webhooks[{i}]"), w)?;
        }
        for (i, s) in self.sinks.iter().enumerate() {
            let key = format!("notify.sinks[{i}]");
            let k = |f: &str| format!("{key}.{f}");
            require_non_empty(&k("name"), s.name())?;
            match s {
                SinkSettings::Webhook(w) => validate_webhook(&key, w)?,
                SinkSettings::Slack(u) | SinkSettings::Teams(u) => {
                    require_url(&k("url"), &u.url)?;
                    require_file(&k("ca_file"), u.ca_file.as_ref())?;
                    u.delivery.validate(&key)?;
                }
                SinkSettings::Pagerduty(p) => {
                    require_url(&k("url"), &p.url)?;
                    require_non_empty(&k("routing_key"), &p.routing_key)?;
                    require_file(&k("ca_file"), p.ca_file.as_ref())?;
                    p.delivery.validate(&key)?;
                }
                SinkSettings::SplunkHec(h) => {
                    require_url(&k("url"), &h.url)?;
                    require_non_empty(&k("token"), &h.token)?;
                    require_file(&k("ca_file"), h.ca_file.as_ref())?;
                    h.delivery.validate(&key)?;
                }
                SinkSettings::Elasticsearch(e) => {
                    require_url(&k("url"), &e.url)?;
                    require_non_empty(&k("index"), &e.index)?;
                    if e.username.is_some() != e.password.is_some() {
                        return Err(SettingsError::invalid(
                            k("username"),
                            "username and password go together",
                        ));
                    }
                    require_file(&k("ca_file"), e.ca_file.as_ref())?;
                    e.delivery.validate(&key)?;
                }
                SinkSettings::Ocsf(o) => {
                    require_url(&k("url"), &o.url)?;
                    require_file(&k("ca_file"), o.ca_file.as_ref())?;
                    o.delivery.validate(&key)?;
                }
                SinkSettings::Loki(l) => {
                    require_url(&k("url"), &l.url)?;
                    require_file(&k("ca_file"), l.ca_file.as_ref())?;
                    l.delivery.validate(&key)?;
                }
                SinkSettings::Kafka(t) => {
                    require_non_empty(&k("topic"), &t.topic)?;
                    t.delivery.validate(&key)?;
                }
                SinkSettings::Syslog(s) => s.validate(&key)?,
                SinkSettings::Email(e) => e.validate(&key)?,
            }
        }
        Ok(())
    }
}

fn validate_webhook(key: &str, w: &WebhookSinkSettings) -> Result<(), SettingsError> {
    require_non_empty(&format!("{key}.name"), &w.name)?;
    require_url(&format!("{key}.url"), &w.url)?;
    require_range(&format!("{key}.timeout_ms"), w.timeout_ms, 100, 300_000)?;
    require_range(&format!("{key}.max_attempts"), w.max_attempts, 0, 1_000)?;
    w.delivery.validate(key)
}
