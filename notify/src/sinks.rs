//! Where alerts go. Each sink delivers one alert with its own retries; a sink that gives up
//! returns an error and the caller dead-letters the alert for that sink. One sink failing never
//! stops the others.

use std::time::Duration;

use hmac::{Hmac, Mac};
use korvid_common::kafka::RecordProducer;
use korvid_schemas::Alert;
use sha2::Sha256;

use crate::settings::WebhookSinkSettings;

/// A delivery that failed for good.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {reason}")]
pub struct SinkError {
    /// Sink name.
    pub sink: String,
    /// Last error.
    pub reason: String,
}

/// A destination for alerts.
#[async_trait::async_trait]
pub trait AlertSink: Send + Sync {
    /// Name for logs, metrics and dead letters (`stdout`, `webhook:soc`).
    fn name(&self) -> &str;
    /// Delivers one alert, retrying as the sink sees fit.
    async fn deliver(&self, alert: &Alert) -> Result<(), SinkError>;
}

/// Renders an alert for people: what, why, how to fix, how to prevent, proof.
pub fn render_text(a: &Alert) -> String {
    let mut out = format!(
        "[{sev}] {title}\n  tactic:      {tactic} ({techniques})\n  subject:     {subject}\n  cluster:     {cluster}\n  rule:        {rule}\n  alert id:    {id}\n  occurrences: {n}\n",
        sev = a.severity.as_str().to_uppercase(),
        title = a.title,
        tactic = a.tactic.display_name(),
        techniques = a.techniques.join(", "),
        subject = a.subject,
        cluster = a.cluster,
        rule = a
            .rule_id
            .as_deref()
            .or(a.model_version.as_deref())
            .unwrap_or("-"),
        id = a.id,
        n = a.occurrences,
    );
    out.push_str(&format!("  why:         {}\n", a.implication));
    out.push_str(&format!("  fix:         {}\n", a.remediation));
    out.push_str(&format!("  prevent:     {}\n", a.prevention));
    if !a.evidence.is_empty() {
        out.push_str("  evidence:\n");
        for e in &a.evidence {
            out.push_str(&format!("    {}: {}\n", e.name, e.value));
        }
    }
    out
}

/// The JSON document webhooks receive.
pub fn webhook_body(a: &Alert) -> serde_json::Value {
    serde_json::json!({
        "kind": "korvid.alert.v1",
        "summary": format!("[{}] {} on {}", a.severity.as_str(), a.title, a.subject),
        "alert": a,
    })
}

/// Prints alerts to standard output.
pub struct StdoutSink;

#[async_trait::async_trait]
impl AlertSink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn deliver(&self, alert: &Alert) -> Result<(), SinkError> {
        use std::io::Write;
        let text = render_text(alert);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")
            .and_then(|_| out.flush())
            .map_err(|e| SinkError {
                sink: "stdout".into(),
                reason: e.to_string(),
            })
    }
}

/// POSTs alerts as JSON, signed with HMAC-SHA256 when a secret is set.
///
/// Headers: `X-Korvid-Timestamp` (ms) and `X-Korvid-Signature: sha256=<hex>` over
/// `"{timestamp}.{body}"`, so receivers can reject replays and forgeries.
pub struct WebhookSink {
    name: String,
    settings: WebhookSinkSettings,
    http: reqwest::Client,
}

impl WebhookSink {
    /// A sink for one configured receiver.
    pub fn new(settings: WebhookSinkSettings) -> Result<Self, SinkError> {
        korvid_common::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .user_agent(concat!("korvid/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError {
                sink: settings.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(WebhookSink {
            name: format!("webhook:{}", settings.name),
            settings,
            http,
        })
    }
}

/// `sha256=<hex>` of `"{timestamp}.{body}"` under `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait::async_trait]
impl AlertSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, alert: &Alert) -> Result<(), SinkError> {
        let body = serde_json::to_vec(&webhook_body(alert)).map_err(|e| SinkError {
            sink: self.name.clone(),
            reason: e.to_string(),
        })?;
        let mut backoff = Duration::from_millis(250);
        let mut last = String::new();
        for attempt in 1..=self.settings.max_attempts {
            let ts = korvid_common::now_millis();
            let mut req = self
                .http
                .post(&self.settings.url)
                .header("content-type", "application/json")
                .header("x-korvid-timestamp", ts.to_string())
                .header("x-korvid-alert-id", &alert.id)
                .body(body.clone());
            if let Some(secret) = &self.settings.hmac_secret {
                req = req.header("x-korvid-signature", signature(secret, ts, &body));
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    last = format!("HTTP {status}");
                    // Client errors other than throttling will not improve with retries.
                    if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408
                    {
                        break;
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < self.settings.max_attempts {
                tracing::warn!(sink = %self.name, attempt, error = %last, "webhook delivery failed; retrying");
                // Jitter from the clock's low bits spreads retries of many alerts apart.
                let jitter = Duration::from_millis((korvid_common::now_millis() % 100) as u64);
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        Err(SinkError {
            sink: self.name.clone(),
            reason: format!(
                "gave up after {} attempt(s): {last}",
                self.settings.max_attempts
            ),
        })
    }
}

/// Writes alerts to the alerts topic (for SIEMs via Kafka Connect, and the findings lake).
pub struct KafkaAlertSink {
    producer: RecordProducer,
    topic: String,
}

impl KafkaAlertSink {
    /// A sink writing to `topic`.
    pub fn new(producer: RecordProducer, topic: String) -> Self {
        KafkaAlertSink { producer, topic }
    }
}

#[async_trait::async_trait]
impl AlertSink for KafkaAlertSink {
    fn name(&self) -> &str {
        "kafka"
    }

    async fn deliver(&self, alert: &Alert) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self
                .producer
                .send(&self.topic, &alert.fingerprint, alert)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt >= 5 => {
                    return Err(SinkError {
                        sink: "kafka".into(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "alert not written to Kafka; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_stable_and_keyed() {
        let a = signature("s3cret", 1700000000000, b"{}");
        assert!(a.starts_with("sha256="));
        assert_eq!(a, signature("s3cret", 1700000000000, b"{}"));
        assert_ne!(a, signature("other", 1700000000000, b"{}"));
        assert_ne!(a, signature("s3cret", 1700000000001, b"{}"));
    }
}
