//! Where alerts go, and how they get there reliably.
//!
//! A [`Sink`] knows one destination's format and protocol and sends one request's worth of
//! alerts. Everything about *reliability* lives in [`worker`], the same for every sink: its own
//! bounded queue, a rate limit, retries with exponential backoff and full jitter, a circuit
//! breaker, and a dead letter when a delivery is refused for good or waited too long. Each sink
//! has its own worker, so a sink that is down never delays another.
//!
//! Sinks come in two shapes ([`Shape`]): *grouped* sinks are read by people (stdout, Slack,
//! Teams, email) and get one message per notification group; *per-alert* sinks feed machines
//! (webhooks, PagerDuty, SIEMs, Kafka, Loki) and get the alerts that changed, batched up to
//! what one request of theirs takes.

pub mod build;
mod email;
mod http;
mod machines;
mod people;
mod syslog;
pub mod worker;

use std::time::Duration;

use korvid_schemas::Alert;

pub use email::{EmailSettings, EmailSink, SmtpSecurity, email_text};
pub use http::HttpPoster;
pub use machines::{
    ElasticsearchSink, KafkaSink, LokiSink, OcsfSink, PagerDutySink, SplunkHecSink, WebhookSink,
    ecs_document, ocsf_finding, signature, webhook_body,
};
pub use people::{ChatSink, StdoutSink, render_text, slack_message, teams_message};
pub use syslog::{SyslogSettings, SyslogSink, cef_line, rfc5424_frame};

/// How a sink wants its alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One message per notification group, listing its alerts.
    Grouped,
    /// Alerts one by one (batched up to [`Sink::max_batch`] per request).
    PerAlert,
}

/// What one send gets: the alerts and the group they were notified in.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The notification group (`cluster=prod,namespace=web`), for titles and threading.
    pub group: String,
    /// The alerts, firing or resolved.
    pub alerts: Vec<Alert>,
}

/// Why a send did not (fully) succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth trying again (timeouts, 5xx, 429); `retry_after` when the receiver said so.
    #[error("{reason}")]
    Retryable {
        /// What happened.
        reason: String,
        /// The receiver's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The receiver refused the request; retrying will not help (a 400, a bad token).
    #[error("refused: {reason}")]
    Refused {
        /// What the receiver said.
        reason: String,
    },
    /// Some alerts of a batch went in, some did not (Elasticsearch `_bulk`): `retry` are the
    /// indexes worth another try, `refused` those refused for good.
    #[error("{reason}")]
    Partial {
        /// What happened to the first failed item.
        reason: String,
        /// Indexes into the delivery's alerts to try again.
        retry: Vec<usize>,
        /// Indexes refused for good.
        refused: Vec<usize>,
    },
}

impl SendError {
    /// A retryable error from anything displayable.
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        SendError::Retryable {
            reason: reason.to_string(),
            retry_after: None,
        }
    }

    /// A refusal from anything displayable.
    pub fn refused(reason: impl std::fmt::Display) -> Self {
        SendError::Refused {
            reason: reason.to_string(),
        }
    }
}

/// A sink could not be built from its settings.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {reason}")]
pub struct SinkError {
    /// Sink name.
    pub sink: String,
    /// What is wrong.
    pub reason: String,
}

/// One destination's format and protocol.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Name for logs, metrics, routes and dead letters (`soc-slack`).
    fn name(&self) -> &str;
    /// Whether it takes groups or alerts.
    fn shape(&self) -> Shape;
    /// Most alerts one request carries (per-alert sinks).
    fn max_batch(&self) -> usize {
        1
    }
    /// Sends once; the worker decides about retries.
    async fn send(&self, delivery: &Delivery) -> Result<(), SendError>;
}

/// The severity of an alert as a number 0–10, as CEF and some SIEMs want it.
pub fn severity_number(a: &Alert) -> u8 {
    match a.severity {
        korvid_schemas::Severity::Low => 3,
        korvid_schemas::Severity::Medium => 5,
        korvid_schemas::Severity::High => 8,
        korvid_schemas::Severity::Critical => 10,
    }
}

/// The MITRE ATT&CK id of a tactic (the Kubernetes threat matrix uses ATT&CK's tactics).
pub fn tactic_id(t: korvid_schemas::Tactic) -> &'static str {
    use korvid_schemas::Tactic::*;
    match t {
        InitialAccess => "TA0001",
        Execution => "TA0002",
        Persistence => "TA0003",
        PrivilegeEscalation => "TA0004",
        DefenseEvasion => "TA0005",
        CredentialAccess => "TA0006",
        Discovery => "TA0007",
        LateralMovement => "TA0008",
        Collection => "TA0009",
        Impact => "TA0040",
    }
}

/// `firing` or `resolved`.
pub fn status_str(a: &Alert) -> &'static str {
    match a.status {
        korvid_schemas::AlertStatus::Firing => "firing",
        korvid_schemas::AlertStatus::Resolved => "resolved",
    }
}

/// A link-friendly, stable id for one notification of an alert: the alert id, its status and
/// the last finding folded in. Receivers that index by id (Elasticsearch) stay idempotent when
/// a retry repeats a request that had in fact gone through.
pub fn notification_id(a: &Alert) -> String {
    format!("{}-{}-{}", a.id, status_str(a), a.last_seen)
}

/// The first `n` characters of `s` (whole characters, never a split UTF-8 sequence).
pub fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
