//! Sinks machines read: signed webhooks, PagerDuty Events v2, Splunk HEC, Elasticsearch /
//! OpenSearch `_bulk` (ECS), OCSF Detection Findings, Loki and a Kafka topic. Each builds the
//! receiver's documented payload; retries, rate limits and dead letters are the worker's.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use korvid_common::kafka::RecordProducer;
use korvid_schemas::{Alert, AlertStatus, Detector, Severity};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{
    Delivery, HttpPoster, SendError, Shape, Sink, first_chars, notification_id, rfc3339,
    severity_number, status_str, tactic_id,
};

/// The JSON document webhooks receive.
pub fn webhook_body(a: &Alert) -> Value {
    json!({
        "kind": "korvid.alert.v1",
        "summary": summary(a),
        "notification_id": notification_id(a),
        "alert": a,
    })
}

fn summary(a: &Alert) -> String {
    let resolved = if a.status == AlertStatus::Resolved {
        "RESOLVED "
    } else {
        ""
    };
    format!(
        "{resolved}[{}] {} on {}",
        a.severity.as_str(),
        a.title,
        a.subject
    )
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

/// POSTs each alert as JSON, signed with HMAC-SHA256 when a secret is set.
///
/// Headers: `X-Korvid-Timestamp` (ms) and `X-Korvid-Signature: sha256=<hex>` over
/// `"{timestamp}.{body}"`, so receivers can reject replays and forgeries;
/// `X-Korvid-Notification-Id` lets them drop a repeat of a request that went through.
pub struct WebhookSink {
    name: String,
    url: String,
    hmac_secret: Option<String>,
    http: HttpPoster,
}

impl WebhookSink {
    /// A sink posting to `url`.
    pub fn new(name: &str, url: &str, hmac_secret: Option<String>, http: HttpPoster) -> Self {
        WebhookSink {
            name: name.into(),
            url: url.into(),
            hmac_secret,
            http,
        }
    }
}

#[async_trait::async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        for a in &d.alerts {
            let body = serde_json::to_vec(&webhook_body(a)).map_err(SendError::refused)?;
            let ts = korvid_common::now_millis();
            let mut req = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-korvid-timestamp", ts.to_string())
                .header("x-korvid-alert-id", &a.id)
                .header("x-korvid-notification-id", notification_id(a));
            if let Some(secret) = &self.hmac_secret {
                req = req.header("x-korvid-signature", signature(secret, ts, &body));
            }
            self.http.send(req.body(body)).await?;
        }
        Ok(())
    }
}

/// PagerDuty Events API v2 severity.
fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "info",
    }
}

/// The Events API v2 event for an alert: `trigger` while firing, `resolve` once resolved, with
/// the fingerprint as `dedup_key` so PagerDuty folds repeats into one incident.
pub fn pagerduty_event(a: &Alert, routing_key: &str) -> Value {
    let details: BTreeMap<&str, &str> = a
        .evidence
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_str()))
        .collect();
    match a.status {
        AlertStatus::Resolved => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": a.fingerprint,
        }),
        AlertStatus::Firing => json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": a.fingerprint,
            "client": "korvid",
            "payload": {
                "summary": first_chars(&summary(a), 1024),
                "source": format!("{}/{}", a.cluster, a.subject),
                "severity": pagerduty_severity(a.severity),
                "timestamp": rfc3339(a.event_time),
                "component": a.subject.to_string(),
                "group": a.subject.namespace.clone().unwrap_or_else(|| a.cluster.clone()),
                "class": a.tactic.as_str(),
                "custom_details": {
                    "alert_id": a.id,
                    "rule": a.rule_id,
                    "tactic": a.tactic.display_name(),
                    "techniques": a.techniques,
                    "occurrences": a.occurrences,
                    "implication": a.implication,
                    "remediation": a.remediation,
                    "prevention": a.prevention,
                    "evidence": details,
                },
            },
        }),
    }
}

/// Sends PagerDuty Events v2 (one event per request, as the API takes them).
pub struct PagerDutySink {
    name: String,
    url: String,
    routing_key: String,
    http: HttpPoster,
}

impl PagerDutySink {
    /// `url` is `https://events.pagerduty.com/v2/enqueue` unless a proxy sits between.
    pub fn new(name: &str, url: &str, routing_key: &str, http: HttpPoster) -> Self {
        PagerDutySink {
            name: name.into(),
            url: url.into(),
            routing_key: routing_key.into(),
            http,
        }
    }
}

#[async_trait::async_trait]
impl Sink for PagerDutySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        for a in &d.alerts {
            let event = pagerduty_event(a, &self.routing_key);
            self.http
                .send(self.http.post(&self.url).json(&event))
                .await?;
        }
        Ok(())
    }
}

/// One Splunk HEC event for an alert.
pub fn hec_event(a: &Alert, index: Option<&str>, sourcetype: &str) -> Value {
    let mut e = json!({
        "time": a.event_time as f64 / 1000.0,
        "host": a.cluster,
        "source": "korvid",
        "sourcetype": sourcetype,
        "event": a,
        "fields": {
            "cluster": a.cluster,
            "severity": a.severity.as_str(),
            "tactic": a.tactic.as_str(),
            "status": status_str(a),
            "fingerprint": a.fingerprint,
        },
    });
    if let Some(i) = index {
        e["index"] = json!(i);
    }
    e
}

/// Splunk HTTP Event Collector: events concatenated in one POST to
/// `/services/collector/event`, authenticated with `Authorization: Splunk <token>`.
pub struct SplunkHecSink {
    name: String,
    url: String,
    token: String,
    index: Option<String>,
    sourcetype: String,
    http: HttpPoster,
}

impl SplunkHecSink {
    /// `url` is the collector's base URL (`https://splunk:8088`) or the full endpoint.
    pub fn new(
        name: &str,
        url: &str,
        token: &str,
        index: Option<String>,
        sourcetype: Option<String>,
        http: HttpPoster,
    ) -> Self {
        let url = if url.contains("/services/collector") {
            url.to_string()
        } else {
            format!("{}/services/collector/event", url.trim_end_matches('/'))
        };
        SplunkHecSink {
            name: name.into(),
            url,
            token: token.into(),
            index,
            sourcetype: sourcetype.unwrap_or_else(|| "korvid:alert".into()),
            http,
        }
    }
}

#[async_trait::async_trait]
impl Sink for SplunkHecSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    fn max_batch(&self) -> usize {
        500
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        let mut body = Vec::new();
        for a in &d.alerts {
            serde_json::to_writer(
                &mut body,
                &hec_event(a, self.index.as_deref(), &self.sourcetype),
            )
            .map_err(SendError::refused)?;
            body.push(b'\n');
        }
        self.http
            .send(
                self.http
                    .post(&self.url)
                    .header("authorization", format!("Splunk {}", self.token))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await
            .map(drop)
    }
}

/// An alert as an Elastic Common Schema document.
pub fn ecs_document(a: &Alert) -> Value {
    let resolved = a.status == AlertStatus::Resolved;
    json!({
        "@timestamp": rfc3339(a.event_time),
        "message": summary(a),
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "alert",
            "category": ["intrusion_detection"],
            "type": ["info"],
            "id": notification_id(a),
            "severity": severity_number(a),
            "start": rfc3339(a.first_seen),
            "end": if resolved { Some(rfc3339(a.last_seen)) } else { None },
            "provider": "korvid",
            "dataset": "korvid.alert",
            "reason": a.implication,
            "risk_score": a.score * 100.0,
        },
        "rule": {
            "id": a.rule_id,
            "name": a.title,
            "ruleset": "korvid",
            "category": a.tactic.as_str(),
            "reference": a.references.first(),
        },
        "threat": {
            "framework": "MITRE ATT&CK",
            "tactic": {"id": [tactic_id(a.tactic)], "name": [a.tactic.display_name()]},
            "technique": {"id": a.techniques},
        },
        "orchestrator": {
            "type": "kubernetes",
            "cluster": {"name": a.cluster},
            "namespace": a.subject.namespace,
            "resource": {"type": a.subject.kind, "name": a.subject.name, "id": a.subject.uid},
        },
        "labels": {
            "korvid_alert_id": a.id,
            "korvid_fingerprint": a.fingerprint,
            "korvid_status": status_str(a),
        },
        "korvid": {
            "status": status_str(a),
            "occurrences": a.occurrences,
            "finding_ids": a.finding_ids,
            "detector": match a.detector {
                Detector::Rule => "rule",
                Detector::Model => "model",
                Detector::Fused => "fused",
            },
            "remediation": a.remediation,
            "prevention": a.prevention,
            "evidence": a.evidence.iter().map(|e| (e.name.clone(), e.value.clone())).collect::<BTreeMap<_, _>>(),
        },
    })
}

/// Elasticsearch / OpenSearch `_bulk`: `create` actions with the notification id as `_id`, so
/// a retried request that had gone through conflicts (409) instead of indexing twice. Items
/// are judged one by one: conflicts and 2xx are done, 429/5xx are retried alone, the rest
/// dead-lettered.
pub struct ElasticsearchSink {
    name: String,
    url: String,
    index: String,
    auth: Option<String>,
    http: HttpPoster,
}

impl ElasticsearchSink {
    /// `url` is the cluster's base URL; `auth` a full `Authorization` header value
    /// (`ApiKey ...` or `Basic ...`).
    pub fn new(name: &str, url: &str, index: &str, auth: Option<String>, http: HttpPoster) -> Self {
        ElasticsearchSink {
            name: name.into(),
            url: format!("{}/_bulk", url.trim_end_matches('/')),
            index: index.into(),
            auth,
            http,
        }
    }
}

/// The `_bulk` request body (NDJSON, one action line and one document line per alert).
pub fn bulk_body(index: &str, alerts: &[Alert]) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = Vec::new();
    for a in alerts {
        serde_json::to_writer(
            &mut body,
            &json!({"create": {"_index": index, "_id": notification_id(a)}}),
        )?;
        body.push(b'\n');
        serde_json::to_writer(&mut body, &ecs_document(a))?;
        body.push(b'\n');
    }
    Ok(body)
}

#[async_trait::async_trait]
impl Sink for ElasticsearchSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    fn max_batch(&self) -> usize {
        500
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        let body = bulk_body(&self.index, &d.alerts).map_err(SendError::refused)?;
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/x-ndjson")
            .body(body);
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth);
        }
        let response = self.http.send(req).await?;
        let answer: Value = response
            .json()
            .await
            .map_err(|e| SendError::retry(format!("unreadable _bulk answer: {e}")))?;
        if answer["errors"] != json!(true) {
            return Ok(());
        }
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        if items.len() != d.alerts.len() {
            return Err(SendError::retry(format!(
                "_bulk answered {} items for {} documents",
                items.len(),
                d.alerts.len()
            )));
        }
        let (mut retry, mut refused) = (Vec::new(), Vec::new());
        let (mut refused_reason, mut retry_reason) = (String::new(), String::new());
        for (i, item) in items.iter().enumerate() {
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or_default();
            let status = result["status"].as_u64().unwrap_or(0) as u16;
            // 409: a document with this notification id exists, i.e. an earlier try went in.
            if (200..300).contains(&status) || status == 409 {
                continue;
            }
            let why = format!(
                "item {i}: HTTP {status}: {} {}",
                result["error"]["type"].as_str().unwrap_or("?"),
                result["error"]["reason"].as_str().unwrap_or("")
            );
            let code = reqwest::StatusCode::from_u16(status)
                .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
            let (list, reason) = if super::http::retryable(code) {
                (&mut retry, &mut retry_reason)
            } else {
                (&mut refused, &mut refused_reason)
            };
            list.push(i);
            if reason.is_empty() {
                *reason = why;
            }
        }
        if retry.is_empty() && refused.is_empty() {
            return Ok(());
        }
        // The reason goes with the dead letter when items were refused for good.
        let reason = if refused_reason.is_empty() {
            retry_reason
        } else {
            refused_reason
        };
        Err(SendError::Partial {
            reason,
            retry,
            refused,
        })
    }
}

/// OCSF severity_id: 1 informational … 5 critical.
fn ocsf_severity(s: Severity) -> (u8, &'static str) {
    match s {
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

/// OCSF schema version the findings follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// An alert as an OCSF Detection Finding (class 2004, category Findings): `Create` while
/// firing, `Close` once resolved.
pub fn ocsf_finding(a: &Alert) -> Value {
    let (activity_id, activity) = match a.status {
        AlertStatus::Firing => (1, "Create"),
        AlertStatus::Resolved => (3, "Close"),
    };
    let (status_id, status) = match a.status {
        AlertStatus::Firing => (1, "New"),
        AlertStatus::Resolved => (4, "Resolved"),
    };
    let (severity_id, severity) = ocsf_severity(a.severity);
    let analytic = match a.detector {
        Detector::Rule => json!({"uid": a.rule_id, "name": a.title, "type_id": 1, "type": "Rule"}),
        Detector::Model | Detector::Fused => json!({
            "uid": a.rule_id.clone().or(a.model_version.clone()), "name": a.title,
            "type_id": 4, "type": "Learning (ML/DL)", "version": a.model_version
        }),
    };
    json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 2004 * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity}"),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": a.event_time,
        "message": summary(a),
        "confidence_score": (a.score * 100.0).round() as i64,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": notification_id(a),
            "product": {
                "name": "korvid",
                "vendor_name": "korvid",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "finding_info": {
            "uid": a.id,
            "title": a.title,
            "desc": a.implication,
            "types": [a.tactic.display_name()],
            "first_seen_time": a.first_seen,
            "last_seen_time": a.last_seen,
            "related_events_count": a.occurrences,
            "analytic": analytic,
            "attacks": [{
                "tactic": {"uid": tactic_id(a.tactic), "name": a.tactic.display_name()},
                "technique": a.techniques.first().map(|t| json!({"uid": t})),
                "version": "15",
            }],
        },
        "resources": [{
            "type": a.subject.kind,
            "name": a.subject.name,
            "uid": a.subject.uid,
            "namespace": a.subject.namespace,
            "cloud_partition": a.cluster,
        }],
        "evidences": [{
            "data": a.evidence.iter().map(|e| (e.name.clone(), e.value.clone())).collect::<BTreeMap<_, _>>(),
        }],
        "remediation": {"desc": a.remediation, "references": a.references},
        "unmapped": {
            "fingerprint": a.fingerprint,
            "prevention": a.prevention,
            "cluster": a.cluster,
            "finding_ids": a.finding_ids,
        },
    })
}

/// POSTs OCSF Detection Findings as a JSON array (Amazon Security Lake, Splunk, or any
/// collector that takes OCSF over HTTP); `headers` carry the collector's authentication.
pub struct OcsfSink {
    name: String,
    url: String,
    headers: Vec<(String, String)>,
    http: HttpPoster,
}

impl OcsfSink {
    /// A sink posting to `url` with extra `headers`.
    pub fn new(name: &str, url: &str, headers: Vec<(String, String)>, http: HttpPoster) -> Self {
        OcsfSink {
            name: name.into(),
            url: url.into(),
            headers,
            http,
        }
    }
}

#[async_trait::async_trait]
impl Sink for OcsfSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    fn max_batch(&self) -> usize {
        500
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        let body: Vec<Value> = d.alerts.iter().map(ocsf_finding).collect();
        let mut req = self.http.post(&self.url).json(&body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        self.http.send(req).await.map(drop)
    }
}

/// Pushes alerts to Loki as log lines (the alert JSON), in streams labelled only by
/// low-cardinality values: source, cluster, severity, tactic and status.
pub struct LokiSink {
    name: String,
    url: String,
    tenant: Option<String>,
    http: HttpPoster,
}

impl LokiSink {
    /// `url` is Loki's base URL; `tenant` becomes `X-Scope-OrgID`.
    pub fn new(name: &str, url: &str, tenant: Option<String>, http: HttpPoster) -> Self {
        LokiSink {
            name: name.into(),
            url: format!("{}/loki/api/v1/push", url.trim_end_matches('/')),
            tenant,
            http,
        }
    }
}

/// The push request for `alerts`.
pub fn loki_push(alerts: &[Alert]) -> Result<Value, serde_json::Error> {
    let mut streams: BTreeMap<Vec<(&str, String)>, Vec<Value>> = BTreeMap::new();
    for a in alerts {
        let labels = vec![
            ("source", "korvid".to_string()),
            ("cluster", a.cluster.clone()),
            ("severity", a.severity.as_str().to_string()),
            ("tactic", a.tactic.as_str().to_string()),
            ("status", status_str(a).to_string()),
        ];
        let line = serde_json::to_string(a)?;
        let ns = (a.event_time as i128 * 1_000_000).to_string();
        streams.entry(labels).or_default().push(json!([ns, line]));
    }
    Ok(json!({
        "streams": streams.into_iter().map(|(labels, values)| json!({
            "stream": labels.into_iter().collect::<BTreeMap<_, _>>(),
            "values": values,
        })).collect::<Vec<_>>()
    }))
}

#[async_trait::async_trait]
impl Sink for LokiSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    fn max_batch(&self) -> usize {
        500
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        let body = loki_push(&d.alerts).map_err(SendError::refused)?;
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(t) = &self.tenant {
            req = req.header("x-scope-orgid", t);
        }
        self.http.send(req).await.map(drop)
    }
}

/// Writes alerts to a Kafka topic (the alerts topic by default), keyed by fingerprint.
pub struct KafkaSink {
    name: String,
    producer: RecordProducer,
    topic: String,
}

impl KafkaSink {
    /// A sink writing to `topic`.
    pub fn new(name: &str, producer: RecordProducer, topic: String) -> Self {
        KafkaSink {
            name: name.into(),
            producer,
            topic,
        }
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    fn max_batch(&self) -> usize {
        1000
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        let pending = futures::future::join_all(
            d.alerts
                .iter()
                .map(|a| self.producer.send(&self.topic, &a.fingerprint, a)),
        )
        .await;
        let failed: Vec<usize> = pending
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        match failed.first() {
            None => Ok(()),
            Some(&i) if failed.len() == d.alerts.len() => Err(SendError::retry(
                pending[i]
                    .as_ref()
                    .err()
                    .map_or(String::new(), |e| e.to_string()),
            )),
            Some(&i) => Err(SendError::Partial {
                reason: pending[i]
                    .as_ref()
                    .err()
                    .map_or(String::new(), |e| e.to_string()),
                retry: failed,
                refused: Vec::new(),
            }),
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

    #[test]
    fn bulk_body_pairs_actions_and_documents() {
        let a = crate::engine::tests::alert("fp1");
        let body = bulk_body("korvid-alerts", &[a.clone(), a]).expect("serialises");
        let lines: Vec<Value> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["create"]["_index"], "korvid-alerts");
        assert_eq!(lines[1]["event"]["kind"], "alert");
        assert_eq!(lines[1]["orchestrator"]["type"], "kubernetes");
        assert!(body.ends_with(b"\n"), "_bulk needs a final newline");
    }

    #[test]
    fn ocsf_finding_has_the_required_fields() {
        let f = ocsf_finding(&crate::engine::tests::alert("fp1"));
        for k in [
            "activity_id",
            "category_uid",
            "class_uid",
            "finding_info",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ] {
            assert!(!f[k].is_null(), "{k} missing");
        }
        assert_eq!(f["type_uid"], 200401);
        assert!(f["finding_info"]["uid"].is_string());
        assert!(f["metadata"]["product"]["vendor_name"].is_string());
    }
}
