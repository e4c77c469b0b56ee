//! Each HTTP sink against a receiver on loopback that checks the real API's contract the way
//! the service does: Splunk HEC (token, event envelope), Elasticsearch `_bulk` (NDJSON, per-item
//! results, retried items only), PagerDuty Events v2 (required fields, dedup key), Slack (Block
//! Kit limits and the 1 message/s rate), Teams (Adaptive Card), OCSF (required Detection
//! Finding fields) and Loki (push streams). Sinks run under their real workers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use korvid_notify::sinks::worker::{DeliverySettings, SinkMetrics, Undelivered, spawn};
use korvid_notify::sinks::{
    ChatSink, Delivery, ElasticsearchSink, HttpPoster, LokiSink, OcsfSink, PagerDutySink, Sink,
    SplunkHecSink,
};
use korvid_schemas::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Default)]
struct Seen {
    /// Accepted payloads per API.
    accepted: BTreeMap<&'static str, Vec<Value>>,
    /// Refusals the receiver made (what a real service would have said no to).
    refused: Vec<String>,
    /// Elasticsearch: documents by _id, and how many times each item was offered.
    indexed: BTreeMap<String, Value>,
    offered: BTreeMap<String, usize>,
    /// Slack: when the last message was accepted.
    slack_last: Option<Instant>,
    slack_throttled: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn refuse(seen: &Shared, api: &str, why: String) -> Response {
    seen.lock()
        .expect("lock")
        .refused
        .push(format!("{api}: {why}"));
    (StatusCode::BAD_REQUEST, why).into_response()
}

const HEC_TOKEN: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

async fn hec(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Splunk {HEC_TOKEN}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"text": "Invalid token", "code": 4})),
        )
            .into_response();
    }
    // HEC takes JSON objects one after another (no array).
    let mut events = Vec::new();
    for item in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let Ok(e) = item else {
            return refuse(&seen, "hec", "invalid data format".into());
        };
        if !e["time"].is_number() || e["event"].is_null() || !e["sourcetype"].is_string() {
            return refuse(&seen, "hec", format!("bad event envelope: {e}"));
        }
        events.push(e);
    }
    if events.is_empty() {
        return refuse(&seen, "hec", "no data".into());
    }
    seen.lock()
        .expect("lock")
        .accepted
        .entry("hec")
        .or_default()
        .extend(events);
    axum::Json(json!({"text": "Success", "code": 0})).into_response()
}

/// `_bulk`: the first time it sees them, refuses the document whose rule is `KOR-0429` with a
/// 429 (to be retried alone) and the one with `KOR-0400` with a mapping error (for good).
async fn bulk(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-ndjson") {
        return refuse(
            &seen,
            "bulk",
            "Content-Type must be application/x-ndjson".into(),
        );
    }
    if !body.ends_with(b"\n") {
        return refuse(
            &seen,
            "bulk",
            "The bulk request must be terminated by a newline".into(),
        );
    }
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if !lines.len().is_multiple_of(2) {
        return refuse(&seen, "bulk", "odd number of lines".into());
    }
    let mut seen = seen.lock().expect("lock");
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let (Ok(action), Ok(doc)) = (
            serde_json::from_slice::<Value>(pair[0]),
            serde_json::from_slice::<Value>(pair[1]),
        ) else {
            drop(seen);
            return (StatusCode::BAD_REQUEST, "malformed line").into_response();
        };
        let id = action["create"]["_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let index = action["create"]["_index"].as_str().unwrap_or_default();
        if id.is_empty() || index.is_empty() || doc["@timestamp"].is_null() {
            seen.refused.push(format!("bulk: bad pair {action} {doc}"));
        }
        let offered = {
            let n = seen.offered.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        let rule = doc["rule"]["id"].as_str().unwrap_or_default();
        let (status, error) = if rule == "KOR-0429" && offered == 1 {
            (
                429,
                json!({"type": "es_rejected_execution_exception", "reason": "queue full"}),
            )
        } else if rule == "KOR-0400" {
            (
                400,
                json!({"type": "mapper_parsing_exception", "reason": "failed to parse field"}),
            )
        } else if seen.indexed.contains_key(&id) {
            (
                409,
                json!({"type": "version_conflict_engine_exception", "reason": "document already exists"}),
            )
        } else {
            seen.indexed.insert(id.clone(), doc.clone());
            seen.accepted.entry("bulk").or_default().push(doc);
            (201, Value::Null)
        };
        let mut result = json!({"_index": index, "_id": id, "status": status});
        if status >= 300 {
            errors = true;
            result["error"] = error;
        }
        items.push(json!({"create": result}));
    }
    axum::Json(json!({"took": 3, "errors": errors, "items": items})).into_response()
}

async fn pagerduty(State(seen): State<Shared>, body: Bytes) -> Response {
    let Ok(e) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&seen, "pagerduty", "not JSON".into());
    };
    let mut errors = Vec::new();
    if e["routing_key"].as_str().is_none_or(|k| k.len() != 32) {
        errors.push("routing_key must be the 32-character integration key");
    }
    let action = e["event_action"].as_str().unwrap_or_default();
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        errors.push("event_action must be trigger, acknowledge or resolve");
    }
    if e["dedup_key"]
        .as_str()
        .is_none_or(|k| k.is_empty() || k.len() > 255)
    {
        errors.push("dedup_key is needed here and at most 255 characters");
    }
    if action == "trigger" {
        let p = &e["payload"];
        if p["summary"]
            .as_str()
            .is_none_or(|s| s.is_empty() || s.len() > 1024)
        {
            errors.push("payload.summary is required (at most 1024 characters)");
        }
        if p["source"].as_str().is_none_or(str::is_empty) {
            errors.push("payload.source is required");
        }
        if !["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap_or(""))
        {
            errors.push("payload.severity must be critical, error, warning or info");
        }
    }
    if !errors.is_empty() {
        seen.lock()
            .expect("lock")
            .refused
            .push(format!("pagerduty: {errors:?}"));
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors})),
        )
            .into_response();
    }
    let key = e["dedup_key"].clone();
    seen.lock()
        .expect("lock")
        .accepted
        .entry("pagerduty")
        .or_default()
        .push(e);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "success", "message": "Event processed", "dedup_key": key})),
    )
        .into_response()
}

fn text_len(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

async fn slack(State(seen): State<Shared>, body: Bytes) -> Response {
    {
        let mut s = seen.lock().expect("lock");
        if s.slack_last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(950))
        {
            s.slack_throttled += 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "rate_limited",
            )
                .into_response();
        }
    }
    let Ok(m) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&seen, "slack", "invalid_payload".into());
    };
    let blocks = m["blocks"].as_array().cloned().unwrap_or_default();
    let mut bad = Vec::new();
    if text_len(&m["text"]) == 0 {
        bad.push("text fallback missing".to_string());
    }
    if blocks.is_empty() || blocks.len() > 50 {
        bad.push(format!("{} blocks", blocks.len()));
    }
    for b in &blocks {
        match b["type"].as_str().unwrap_or_default() {
            "header" => {
                if b["text"]["type"] != "plain_text" || text_len(&b["text"]["text"]) > 150 {
                    bad.push("header must be plain_text up to 150".into());
                }
            }
            "section" => {
                if text_len(&b["text"]["text"]) > 3000 {
                    bad.push("section text over 3000".into());
                }
                let fields = b["fields"].as_array().cloned().unwrap_or_default();
                if fields.len() > 10 || fields.iter().any(|f| text_len(&f["text"]) > 2000) {
                    bad.push("section fields over limits".into());
                }
            }
            "context" => {
                if b["elements"]
                    .as_array()
                    .is_none_or(|e| e.is_empty() || e.len() > 10)
                {
                    bad.push("context needs 1-10 elements".into());
                }
            }
            "divider" => {}
            other => bad.push(format!("unknown block type {other}")),
        }
    }
    if !bad.is_empty() {
        return refuse(&seen, "slack", format!("invalid_blocks: {bad:?}"));
    }
    let mut s = seen.lock().expect("lock");
    s.slack_last = Some(Instant::now());
    s.accepted.entry("slack").or_default().push(m);
    "ok".into_response()
}

async fn teams(State(seen): State<Shared>, body: Bytes) -> Response {
    let Ok(m) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&seen, "teams", "not JSON".into());
    };
    let card = &m["attachments"][0];
    if m["type"] != "message"
        || card["contentType"] != "application/vnd.microsoft.card.adaptive"
        || card["content"]["type"] != "AdaptiveCard"
        || !card["content"]["version"].is_string()
        || card["content"]["body"].as_array().is_none_or(Vec::is_empty)
    {
        return refuse(&seen, "teams", format!("not an Adaptive Card message: {m}"));
    }
    seen.lock()
        .expect("lock")
        .accepted
        .entry("teams")
        .or_default()
        .push(m);
    (StatusCode::ACCEPTED, "1").into_response()
}

async fn ocsf(State(seen): State<Shared>, body: Bytes) -> Response {
    let Ok(Value::Array(findings)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&seen, "ocsf", "expected a JSON array".into());
    };
    for f in &findings {
        let required = [
            "activity_id",
            "category_uid",
            "class_uid",
            "finding_info",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ];
        if let Some(k) = required.iter().find(|k| f[**k].is_null()) {
            return refuse(&seen, "ocsf", format!("required field {k} missing"));
        }
        let ok = f["class_uid"] == 2004
            && f["category_uid"] == 2
            && f["type_uid"].as_i64() == Some(2004 * 100 + f["activity_id"].as_i64().unwrap_or(-1))
            && (1..=6).contains(&f["severity_id"].as_i64().unwrap_or(0))
            && f["finding_info"]["uid"].is_string()
            && f["finding_info"]["title"].is_string()
            && f["metadata"]["version"].is_string()
            && f["metadata"]["product"]["name"].is_string()
            && f["metadata"]["product"]["vendor_name"].is_string()
            && f["time"].is_i64();
        if !ok {
            return refuse(&seen, "ocsf", format!("not a valid Detection Finding: {f}"));
        }
    }
    seen.lock()
        .expect("lock")
        .accepted
        .entry("ocsf")
        .or_default()
        .extend(findings);
    "ok".into_response()
}

async fn loki(State(seen): State<Shared>, body: Bytes) -> Response {
    let Ok(p) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&seen, "loki", "not JSON".into());
    };
    let streams = p["streams"].as_array().cloned().unwrap_or_default();
    for s in &streams {
        let labels_ok = s["stream"]
            .as_object()
            .is_some_and(|l| !l.is_empty() && l.values().all(Value::is_string) && l.len() <= 15);
        let values_ok = s["values"].as_array().is_some_and(|vs| {
            !vs.is_empty()
                && vs.iter().all(|v| {
                    v[0].as_str()
                        .is_some_and(|t| t.chars().all(|c| c.is_ascii_digit()))
                        && v[1].is_string()
                })
        });
        if !labels_ok || !values_ok {
            return refuse(&seen, "loki", format!("bad stream {s}"));
        }
    }
    seen.lock()
        .expect("lock")
        .accepted
        .entry("loki")
        .or_default()
        .extend(streams);
    StatusCode::NO_CONTENT.into_response()
}

async fn receivers() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/services/collector/event", post(hec))
        .route("/_bulk", post(bulk))
        .route("/v2/enqueue", post(pagerduty))
        .route("/slack", post(slack))
        .route("/teams", post(teams))
        .route("/ocsf", post(ocsf))
        .route("/loki/api/v1/push", post(loki))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn alert(n: usize, rule: &str, status: AlertStatus) -> Alert {
    Alert {
        cluster: "prod".into(),
        event_time: 1_790_000_000_000 + n as i64,
        id: format!("fp{n}-1790000000000"),
        fingerprint: format!("fp{n}"),
        status,
        title: format!("Shell in a pod | \"quoted\" <{n}>"),
        tactic: Tactic::Execution,
        techniques: vec!["T1609".into()],
        severity: if n.is_multiple_of(2) {
            Severity::Critical
        } else {
            Severity::High
        },
        subject: Subject {
            kind: "Pod".into(),
            namespace: Some("shop".into()),
            name: format!("web-{n}"),
            uid: Some(format!("uid-{n}")),
        },
        detector: Detector::Rule,
        rule_id: Some(rule.into()),
        model_version: None,
        score: 0.9,
        finding_ids: vec![format!("f{n}")],
        occurrences: 3,
        first_seen: 1_790_000_000_000,
        last_seen: 1_790_000_000_000 + n as i64,
        evidence: vec![
            Evidence {
                name: "actor".into(),
                value: "mallory".into(),
            },
            Evidence {
                name: "command".into(),
                value: "sh -c 'cat /etc/shadow'\n& more".into(),
            },
        ],
        implication: "Someone has a shell inside a production workload.".into(),
        remediation: "Revoke pods/exec from the actor; inspect the pod.".into(),
        prevention: "Grant pods/exec only through break-glass roles.".into(),
        references: vec!["https://kubernetes.io/docs/reference/access-authn-authz/rbac/".into()],
    }
}

fn fast() -> DeliverySettings {
    DeliverySettings {
        initial_backoff_ms: 50,
        max_backoff_ms: 200,
        give_up_after_ms: 20_000,
        ..Default::default()
    }
}

/// Runs `sink` under a worker with `settings`, offers `deliveries`, waits for the worker to
/// finish; returns what was dead-lettered.
async fn drive(
    sink: Arc<dyn Sink>,
    settings: DeliverySettings,
    deliveries: Vec<Delivery>,
) -> Vec<Undelivered> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_hurry, hurry_rx) = tokio::sync::watch::channel(false);
    let (handle, join) = spawn(sink, settings, SinkMetrics::default(), tx, hurry_rx);
    for d in deliveries {
        handle.offer(d);
    }
    drop(handle);
    tokio::time::timeout(Duration::from_secs(30), join)
        .await
        .expect("worker finishes")
        .expect("worker ran");
    let mut out = Vec::new();
    while let Ok(u) = rx.try_recv() {
        out.push(u);
    }
    out
}

fn poster() -> HttpPoster {
    HttpPoster::new("test", Duration::from_secs(5), None).expect("client")
}

fn one_by_one(alerts: Vec<Alert>) -> Vec<Delivery> {
    alerts
        .into_iter()
        .map(|a| Delivery {
            group: "cluster=prod".into(),
            alerts: vec![a],
        })
        .collect()
}

#[tokio::test]
async fn splunk_hec_gets_token_authenticated_event_envelopes() {
    let (base, seen) = receivers().await;
    let alerts: Vec<Alert> = (0..5)
        .map(|i| alert(i, "KOR-0003", AlertStatus::Firing))
        .collect();
    let good = SplunkHecSink::new(
        "hec",
        &base,
        HEC_TOKEN,
        Some("security".into()),
        None,
        poster(),
    );
    let dead = drive(Arc::new(good), fast(), one_by_one(alerts.clone())).await;
    assert!(dead.is_empty(), "{dead:?}");
    {
        let s = seen.lock().expect("lock");
        let events = &s.accepted["hec"];
        assert_eq!(events.len(), 5);
        assert_eq!(events[0]["index"], "security");
        assert_eq!(events[0]["sourcetype"], "korvid:alert");
        assert_eq!(events[0]["time"].as_f64(), Some(1_790_000_000.0));
        assert_eq!(events[0]["event"]["id"], alerts[0].id);
        assert_eq!(events[0]["event"]["remediation"], alerts[0].remediation);
    }
    // A wrong token is a refusal (401): dead-lettered at once, not retried for 20 s.
    let bad = SplunkHecSink::new("hec", &base, "wrong", None, None, poster());
    let started = Instant::now();
    let dead = drive(Arc::new(bad), fast(), one_by_one(vec![alerts[0].clone()])).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, "refused");
    assert!(dead[0].reason.contains("401"), "{}", dead[0].reason);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn elasticsearch_bulk_retries_only_the_throttled_item_and_dead_letters_the_refused() {
    let (base, seen) = receivers().await;
    let alerts = vec![
        alert(0, "KOR-0003", AlertStatus::Firing),
        alert(1, "KOR-0429", AlertStatus::Firing),
        alert(2, "KOR-0400", AlertStatus::Firing),
        alert(3, "KOR-0003", AlertStatus::Resolved),
    ];
    let sink = ElasticsearchSink::new(
        "es",
        &base,
        "korvid-alerts",
        Some("ApiKey abc".into()),
        poster(),
    );
    let dead = drive(
        Arc::new(sink),
        fast(),
        vec![Delivery {
            group: "g".into(),
            alerts: alerts.clone(),
        }],
    )
    .await;
    {
        let s = seen.lock().expect("lock");
        assert_eq!(
            s.indexed.len(),
            3,
            "three documents indexed: {:?}",
            s.indexed.keys()
        );
        // The throttled document was offered twice, the others once (only it was retried).
        let offered: Vec<usize> = s.offered.values().copied().collect();
        assert_eq!(
            offered.iter().filter(|n| **n == 2).count(),
            1,
            "{:?}",
            s.offered
        );
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].alerts.len(), 1);
        assert_eq!(dead[0].alerts[0].rule_id.as_deref(), Some("KOR-0400"));
        assert!(dead[0].reason.contains("mapper_parsing_exception"));
        // ECS fields.
        let doc = s.indexed.values().next().expect("a doc");
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["orchestrator"]["type"], "kubernetes");
        assert_eq!(doc["orchestrator"]["namespace"], "shop");
        assert_eq!(doc["threat"]["tactic"]["id"][0], "TA0002");
        assert!(doc["event"]["severity"].is_number());
        assert!(s.refused.is_empty(), "{:?}", s.refused);
    }
    // Sent again (a retry of a request that had gone through): conflicts, nothing twice.
    let sink = ElasticsearchSink::new("es", &base, "korvid-alerts", None, poster());
    let again = vec![alerts[0].clone()];
    let dead = drive(
        Arc::new(sink),
        fast(),
        vec![Delivery {
            group: "g".into(),
            alerts: again,
        }],
    )
    .await;
    assert!(dead.is_empty(), "409 on a known id is success");
    assert_eq!(seen.lock().expect("lock").indexed.len(), 3);
}

#[tokio::test]
async fn pagerduty_gets_valid_trigger_and_resolve_events_keyed_by_fingerprint() {
    let (base, seen) = receivers().await;
    let key = "R0UT1NGK3Y0123456789abcdefABCDEF";
    let sink = PagerDutySink::new("pd", &format!("{base}/v2/enqueue"), key, poster());
    let mut alerts = vec![alert(0, "KOR-0003", AlertStatus::Firing)];
    let mut long = alert(1, "KOR-0003", AlertStatus::Firing);
    long.title = "x".repeat(3000);
    alerts.push(long);
    alerts.push(alert(0, "KOR-0003", AlertStatus::Resolved));
    let dead = drive(Arc::new(sink), fast(), one_by_one(alerts)).await;
    assert!(dead.is_empty(), "{dead:?}");
    {
        let s = seen.lock().expect("lock");
        assert!(s.refused.is_empty(), "{:?}", s.refused);
        let events = &s.accepted["pagerduty"];
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["event_action"], "trigger");
        assert_eq!(events[0]["dedup_key"], "fp0");
        assert_eq!(events[0]["payload"]["severity"], "critical");
        assert_eq!(events[2]["event_action"], "resolve");
        assert_eq!(
            events[2]["dedup_key"], "fp0",
            "the resolve closes the same incident"
        );
        assert!(events[0]["payload"]["custom_details"]["remediation"].is_string());
    }
    // A bad routing key is refused by the API and dead-lettered, not retried.
    let bad = PagerDutySink::new("pd", &format!("{base}/v2/enqueue"), "short", poster());
    let dead = drive(
        Arc::new(bad),
        fast(),
        one_by_one(vec![alert(5, "KOR-0003", AlertStatus::Firing)]),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, "refused");
}

#[tokio::test]
async fn slack_gets_valid_blocks_at_one_message_per_second() {
    let (base, seen) = receivers().await;
    let sink = ChatSink::slack("slack", &format!("{base}/slack"), poster());
    let settings = DeliverySettings {
        rate_per_second: 1.0,
        burst: 1,
        ..fast()
    };
    // Four groups, one with more alerts than a message shows.
    let groups: Vec<Delivery> = (0..4)
        .map(|g| Delivery {
            group: format!("cluster=prod,subject=Pod/shop/web-{g}"),
            alerts: (0..if g == 3 { 30 } else { 2 })
                .map(|i| alert(g * 100 + i, "KOR-0003", AlertStatus::Firing))
                .collect(),
        })
        .collect();
    let started = Instant::now();
    let dead = drive(Arc::new(sink), settings, groups).await;
    assert!(dead.is_empty(), "{dead:?}");
    let s = seen.lock().expect("lock");
    assert!(s.refused.is_empty(), "{:?}", s.refused);
    assert_eq!(s.accepted["slack"].len(), 4);
    assert_eq!(s.slack_throttled, 0, "the rate limit kept us under Slack's");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "4 messages take 3 s at 1/s"
    );
    let last = &s.accepted["slack"][3];
    let blocks = last["blocks"].as_array().expect("blocks");
    assert!(blocks.len() <= 50);
    let text = serde_json::to_string(last).expect("json");
    assert!(text.contains("and 15 more alerts"), "{text}");
    assert!(text.contains("&lt;3"), "mrkdwn escaped: {text}");
}

#[tokio::test]
async fn teams_ocsf_and_loki_get_what_their_apis_take() {
    let (base, seen) = receivers().await;
    let alerts: Vec<Alert> = vec![
        alert(0, "KOR-0003", AlertStatus::Firing),
        alert(1, "KOR-0007", AlertStatus::Resolved),
    ];
    let group = vec![Delivery {
        group: "cluster=prod".into(),
        alerts: alerts.clone(),
    }];
    let teams = ChatSink::teams("teams", &format!("{base}/teams"), poster());
    assert!(
        drive(Arc::new(teams), fast(), group.clone())
            .await
            .is_empty()
    );
    let ocsf = OcsfSink::new(
        "ocsf",
        &format!("{base}/ocsf"),
        vec![("authorization".into(), "Bearer t".into())],
        poster(),
    );
    assert!(
        drive(Arc::new(ocsf), fast(), group.clone())
            .await
            .is_empty()
    );
    let loki = LokiSink::new("loki", &base, Some("security".into()), poster());
    assert!(drive(Arc::new(loki), fast(), group).await.is_empty());
    let s = seen.lock().expect("lock");
    assert!(s.refused.is_empty(), "{:?}", s.refused);
    assert_eq!(s.accepted["teams"].len(), 1);
    let findings = &s.accepted["ocsf"];
    assert_eq!(findings.len(), 2);
    assert_eq!(findings[0]["activity_id"], 1);
    assert_eq!(findings[1]["activity_id"], 3, "resolved closes the finding");
    assert_eq!(findings[1]["status"], "Resolved");
    assert_eq!(
        findings[0]["finding_info"]["attacks"][0]["tactic"]["uid"],
        "TA0002"
    );
    assert_eq!(findings[0]["remediation"]["desc"], alerts[0].remediation);
    let streams = &s.accepted["loki"];
    let statuses: BTreeSet<&str> = streams
        .iter()
        .filter_map(|st| st["stream"]["status"].as_str())
        .collect();
    assert_eq!(statuses, BTreeSet::from(["firing", "resolved"]));
    let line: Value = serde_json::from_str(streams[0]["values"][0][1].as_str().expect("line"))
        .expect("alert JSON");
    assert!(line["implication"].is_string());
}
