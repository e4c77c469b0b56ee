//! Parsing kube-apiserver audit output (`audit.k8s.io/v1`) into AuditEvent records.
//!
//! k8s-openapi has no audit types, so the wire structs are ours. Parsing is strict about what
//! detection needs (auditID, verb, user, a timestamp) and lenient about everything else.

use std::collections::HashMap;

use korvid_schemas::AuditEvent;
use serde::Deserialize;

use crate::managed;
use crate::sanitize::Sanitizer;

/// Why audit input was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuditParseError {
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an EventList or Event.
    #[error(
        "expected an audit.k8s.io/v1 EventList or Event, got kind `{kind}` apiVersion `{api_version}`"
    )]
    WrongKind {
        /// The `kind` seen.
        kind: String,
        /// The `apiVersion` seen.
        api_version: String,
    },
    /// An event lacks a field detection needs, or has it in the wrong shape.
    #[error("event {index} ({audit_id}): {reason}")]
    InvalidEvent {
        /// Position in the list.
        index: usize,
        /// Its auditID, if it had one.
        audit_id: String,
        /// What is wrong.
        reason: String,
    },
}

impl AuditParseError {
    /// Stable name for metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditParseError::Json(_) => "invalid_json",
            AuditParseError::WrongKind { .. } => "wrong_kind",
            AuditParseError::InvalidEvent { .. } => "invalid_event",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent {
    #[serde(rename = "auditID")]
    audit_id: String,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    level: String,
    verb: String,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    user: WireUser,
    impersonated_user: Option<WireUser>,
    #[serde(default, rename = "sourceIPs")]
    source_ips: Vec<String>,
    user_agent: Option<String>,
    object_ref: Option<WireObjectRef>,
    response_status: Option<WireStatus>,
    request_object: Option<serde_json::Value>,
    request_received_timestamp: Option<String>,
    stage_timestamp: Option<String>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct WireUser {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireObjectRef {
    resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    api_group: Option<String>,
    api_version: Option<String>,
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct WireStatus {
    code: Option<i32>,
}

/// The outcome of parsing one body: good events and per-event problems.
#[derive(Debug)]
pub struct ParsedBatch {
    /// Events that parsed.
    pub events: Vec<AuditEvent>,
    /// Events that did not, with their raw JSON.
    pub rejected: Vec<(AuditParseError, Vec<u8>)>,
}

/// Parses an `EventList` (what the webhook backend posts) or a single `Event`.
///
/// A body that is not JSON, or not audit events at all, is an error; individual bad events are
/// returned in [`ParsedBatch::rejected`] so one bad event never costs the rest.
pub fn parse_body(
    body: &[u8],
    cluster: &str,
    sanitizer: &Sanitizer,
) -> Result<ParsedBatch, AuditParseError> {
    if let Some(batch) = parse_event_list_fast(body, cluster, sanitizer) {
        return Ok(batch);
    }
    let envelope: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| AuditParseError::Json(e.to_string()))?;
    parse_value(envelope, false, cluster, sanitizer)
}

/// The webhook's common case in one pass over the text: an `audit.k8s.io` EventList whose items
/// are read straight into their wire structs (no intermediate JSON tree). `None` sends the body
/// down the general path, which gives the precise error for anything unusual.
fn parse_event_list_fast(body: &[u8], cluster: &str, sanitizer: &Sanitizer) -> Option<ParsedBatch> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default, rename = "apiVersion")]
        api_version: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        items: Vec<&'a serde_json::value::RawValue>,
    }
    let env: Envelope<'_> = serde_json::from_slice(body).ok()?;
    if env.kind.as_deref() != Some("EventList")
        || !env
            .api_version
            .as_deref()
            .is_some_and(|v| v.starts_with("audit.k8s.io/"))
    {
        return None;
    }
    let mut batch = ParsedBatch {
        events: Vec::with_capacity(env.items.len()),
        rejected: Vec::new(),
    };
    for (index, raw) in env.items.into_iter().enumerate() {
        let parsed = serde_json::from_str::<WireEvent>(raw.get())
            .map_err(|e| AuditParseError::InvalidEvent {
                index,
                audit_id: audit_id_of(raw.get()),
                reason: e.to_string(),
            })
            .and_then(|ev| finish_event(index, ev, cluster, sanitizer));
        match parsed {
            Ok(ev) => batch.events.push(ev),
            Err(e) => {
                let clean = match serde_json::from_str::<serde_json::Value>(raw.get()) {
                    Ok(v) => {
                        serde_json::to_vec(&sanitizer.sanitize_audit_json(v)).unwrap_or_default()
                    }
                    Err(_) => sanitizer.sanitize_rejected_body(raw.get().as_bytes()),
                };
                batch.rejected.push((e, clean));
            }
        }
    }
    Some(batch)
}

/// The auditID of an event that did not parse, when it has a readable one.
fn audit_id_of(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| {
            v.get("auditID")
                .and_then(|a| a.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "<none>".into())
}

/// Parses one JSON document: an `EventList`, an `Event`, or (when `allow_array`, as audit log
/// files may hold) an array of Events.
pub fn parse_value(
    mut envelope: serde_json::Value,
    allow_array: bool,
    cluster: &str,
    sanitizer: &Sanitizer,
) -> Result<ParsedBatch, AuditParseError> {
    // Files may hold arrays of events, and managed services' exports (EKS, GKE, AKS).
    if allow_array && let serde_json::Value::Array(items) = envelope {
        return Ok(parse_file_items(items, cluster, sanitizer));
    }
    if allow_array && managed::detect(&envelope).is_some() {
        return Ok(parse_file_items(vec![envelope], cluster, sanitizer));
    }
    let text = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (kind, api_version) = (text(&envelope, "kind"), text(&envelope, "apiVersion"));
    if !envelope.is_object() {
        return Err(AuditParseError::Json(
            "expected a JSON object (an EventList or an Event)".into(),
        ));
    }
    if !(api_version.is_empty() || api_version.starts_with("audit.k8s.io/")) {
        return Err(AuditParseError::WrongKind { kind, api_version });
    }
    let items = match kind.as_str() {
        "EventList" => match envelope.get_mut("items").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(items)) => items,
            Some(serde_json::Value::Null) | None => {
                return Err(AuditParseError::WrongKind {
                    kind: "EventList without items".into(),
                    api_version,
                });
            }
            Some(_) => {
                return Err(AuditParseError::Json(
                    "`items` must be a list of events".into(),
                ));
            }
        },
        "Event" if !api_version.is_empty() => vec![envelope],
        _ => return Err(AuditParseError::WrongKind { kind, api_version }),
    };
    Ok(parse_items(items, cluster, sanitizer))
}

/// Items of a file document: Kubernetes events, or managed-service entries unwrapped first.
fn parse_file_items(
    items: Vec<serde_json::Value>,
    cluster: &str,
    sanitizer: &Sanitizer,
) -> ParsedBatch {
    let mut events = Vec::with_capacity(items.len());
    let mut refused = Vec::new();
    for item in items {
        match managed::detect(&item) {
            Some(export) => {
                let u = managed::unwrap(export, item);
                events.extend(u.events);
                refused.extend(u.refused);
            }
            None => events.push(item),
        }
    }
    let mut batch = parse_items(events, cluster, sanitizer);
    for (reason, entry) in refused {
        // The audit event is JSON inside a string here; redact that text itself.
        let inner = ["/message", "/properties/log"]
            .iter()
            .find_map(|p| entry.pointer(p).and_then(serde_json::Value::as_str));
        let raw = match inner {
            Some(text) => sanitizer.sanitize_rejected_body(text.as_bytes()),
            None => {
                sanitizer.sanitize_rejected_body(&serde_json::to_vec(&entry).unwrap_or_default())
            }
        };
        batch.rejected.push((
            AuditParseError::InvalidEvent {
                index: batch.events.len() + batch.rejected.len(),
                audit_id: "<none>".into(),
                reason,
            },
            raw,
        ));
    }
    batch
}

fn parse_items(items: Vec<serde_json::Value>, cluster: &str, sanitizer: &Sanitizer) -> ParsedBatch {
    let mut batch = ParsedBatch {
        events: Vec::with_capacity(items.len()),
        rejected: Vec::new(),
    };
    for (index, item) in items.into_iter().enumerate() {
        match parse_event(index, &item, cluster, sanitizer) {
            Ok(ev) => batch.events.push(ev),
            Err(e) => {
                let raw =
                    serde_json::to_vec(&sanitizer.sanitize_audit_json(item)).unwrap_or_default();
                batch.rejected.push((e, raw));
            }
        }
    }
    batch
}

fn parse_event(
    index: usize,
    item: &serde_json::Value,
    cluster: &str,
    sanitizer: &Sanitizer,
) -> Result<AuditEvent, AuditParseError> {
    let audit_id = item
        .get("auditID")
        .and_then(|v| v.as_str())
        .unwrap_or("<none>")
        .to_string();
    let invalid = |reason: String| AuditParseError::InvalidEvent {
        index,
        audit_id: audit_id.clone(),
        reason,
    };
    let ev = WireEvent::deserialize(item).map_err(|e| invalid(e.to_string()))?;
    finish_event(index, ev, cluster, sanitizer)
}

/// Checks what detection needs and builds the record (secrets in the body hashed).
fn finish_event(
    index: usize,
    ev: WireEvent,
    cluster: &str,
    sanitizer: &Sanitizer,
) -> Result<AuditEvent, AuditParseError> {
    let audit_id = if ev.audit_id.is_empty() {
        "<none>".to_string()
    } else {
        ev.audit_id.clone()
    };
    let invalid = |reason: String| AuditParseError::InvalidEvent {
        index,
        audit_id: audit_id.clone(),
        reason,
    };
    if ev.audit_id.is_empty() {
        return Err(invalid("auditID is empty".into()));
    }
    if ev.verb.is_empty() {
        return Err(invalid("verb is empty".into()));
    }
    if ev.user.username.is_empty() {
        return Err(invalid("user.username is empty".into()));
    }
    let stamp = ev
        .stage_timestamp
        .as_deref()
        .or(ev.request_received_timestamp.as_deref())
        .ok_or_else(|| {
            invalid("neither stageTimestamp nor requestReceivedTimestamp is set".into())
        })?;
    let event_time = chrono::DateTime::parse_from_rfc3339(stamp)
        .map_err(|e| invalid(format!("timestamp `{stamp}` is not RFC 3339: {e}")))?
        .timestamp_micros();
    let object = ev.object_ref.unwrap_or(WireObjectRef {
        resource: None,
        namespace: None,
        name: None,
        api_group: None,
        api_version: None,
        subresource: None,
    });
    // Most URIs hide nothing and are moved, not copied.
    let request_uri = match sanitizer.sanitize_request_uri(&ev.request_uri) {
        std::borrow::Cow::Owned(clean) => Some(clean),
        std::borrow::Cow::Borrowed(_) => None,
    }
    .unwrap_or(ev.request_uri);
    let request_object = ev
        .request_object
        .map(|o| sanitizer.sanitize_object(object.resource.as_deref(), o))
        .and_then(|o| serde_json::to_string(&o).ok());
    Ok(AuditEvent {
        cluster: cluster.to_string(),
        event_time,
        audit_id: ev.audit_id,
        stage: ev.stage,
        level: ev.level,
        verb: ev.verb,
        request_uri,
        user: ev.user.username,
        groups: ev.user.groups,
        impersonated_user: ev.impersonated_user.map(|u| u.username),
        source_ips: ev.source_ips,
        user_agent: ev.user_agent,
        api_group: object.api_group.filter(|g| !g.is_empty()),
        api_version: object.api_version,
        resource: object.resource,
        subresource: object.subresource,
        namespace: object.namespace,
        name: object.name,
        response_code: ev.response_status.and_then(|s| s.code),
        annotations: ev.annotations,
        request_object,
    })
}

/// The Kafka key of an audit event: `cluster/namespace` (`cluster/_cluster` when cluster-scoped).
pub fn partition_key(event: &AuditEvent) -> String {
    format!(
        "{}/{}",
        event.cluster,
        event.namespace.as_deref().unwrap_or("_cluster")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitizer() -> Sanitizer {
        Sanitizer::new(b"test-key-0123456789")
    }

    const EXEC: &str = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[
      {"level":"Metadata","auditID":"a1","stage":"ResponseStarted",
       "requestURI":"/api/v1/namespaces/shop/pods/web-1/exec?command=sh&container=web&stdin=true&tty=true",
       "verb":"create","user":{"username":"alice","groups":["dev","system:authenticated"]},
       "sourceIPs":["10.1.2.3"],"userAgent":"kubectl/v1.30.0",
       "objectRef":{"resource":"pods","namespace":"shop","name":"web-1","apiVersion":"v1","subresource":"exec"},
       "responseStatus":{"metadata":{},"code":101},
       "requestReceivedTimestamp":"2026-11-26T10:00:00.123456Z","stageTimestamp":"2026-11-26T10:00:00.200000Z",
       "annotations":{"authorization.k8s.io/decision":"allow"}}]}"#;

    #[test]
    fn parses_an_event_list() {
        let b = parse_body(EXEC.as_bytes(), "prod", &sanitizer()).expect("parses");
        assert!(b.rejected.is_empty());
        let e = &b.events[0];
        assert_eq!(e.cluster, "prod");
        assert_eq!(e.user, "alice");
        assert_eq!(e.subresource.as_deref(), Some("exec"));
        assert_eq!(e.response_code, Some(101));
        assert_eq!(e.event_time, 1_795_687_200_200_000);
        assert_eq!(partition_key(e), "prod/shop");
    }

    #[test]
    fn refuses_what_is_not_audit() {
        let err = parse_body(b"{\"items\": [", "c", &sanitizer()).expect_err("bad json");
        assert_eq!(err.kind(), "invalid_json");
        let err = parse_body(
            br#"{"kind":"PodList","apiVersion":"v1","items":[]}"#,
            "c",
            &sanitizer(),
        )
        .expect_err("wrong kind");
        assert!(err.to_string().contains("PodList"), "{err}");
        let err = parse_body(br#"[1,2]"#, "c", &sanitizer()).expect_err("array");
        assert_eq!(err.kind(), "invalid_json");
    }

    #[test]
    fn one_bad_event_does_not_cost_the_rest() {
        let head = EXEC.trim_end().strip_suffix("]}").expect("list end");
        let body =
            format!(r#"{head},{{"auditID":"a2","verb":"get","user":{{"username":"bob"}}}}]}}"#);
        let b = parse_body(body.as_bytes(), "c", &sanitizer()).expect("parses");
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.rejected.len(), 1);
        assert!(b.rejected[0].0.to_string().contains("a2"));
        assert!(b.rejected[0].0.to_string().contains("stageTimestamp"));
    }
}
