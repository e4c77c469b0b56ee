//! Audit events as managed Kubernetes services export them, unwrapped into `audit.k8s.io/v1`
//! Event JSON so the one audit parser handles them:
//!
//! - **EKS**: control-plane logs in CloudWatch Logs. Events arrive as a subscription-filter
//!   payload (`{"logGroup", "logStream", "logEvents": [{"message": "<audit event JSON>"}]}`,
//!   what Firehose and Lambda receive), an `aws logs filter-log-events` / `get-log-events`
//!   answer (`{"events": [...]}`), or a single `{"message": ...}` entry.
//! - **GKE**: Cloud Audit Logs entries (`LogEntry` with `protoPayload` of type
//!   `google.cloud.audit.AuditLog`, `serviceName` `k8s.io`), one per line or as arrays.
//! - **AKS**: Azure Monitor diagnostic records of category `kube-audit` /
//!   `kube-audit-admin` (`{"records": [{"category", "properties": {"log": "<audit JSON>"}}]}`).
//!
//! Anything else is returned untouched for the Kubernetes parser to judge.

use serde_json::{Map, Value, json};

/// Which managed service a document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// Amazon EKS via CloudWatch Logs.
    Eks,
    /// Google GKE via Cloud Audit Logs.
    Gke,
    /// Azure AKS via diagnostic settings.
    Aks,
}

/// A managed-service document unwrapped: Kubernetes audit events (as JSON), plus entries that
/// could not be unwrapped, each with its reason.
#[derive(Debug, Default)]
pub struct Unwrapped {
    /// `audit.k8s.io/v1` Event objects.
    pub events: Vec<Value>,
    /// (reason, the entry) for entries that were not audit events.
    pub refused: Vec<(String, Value)>,
}

/// Recognises a managed-service export; `None` when `doc` is not one.
pub fn detect(doc: &Value) -> Option<Export> {
    let obj = doc.as_object()?;
    if obj.contains_key("protoPayload") {
        return Some(Export::Gke);
    }
    if obj.contains_key("logEvents")
        || (obj.contains_key("events") && !obj.contains_key("kind"))
        || (obj.contains_key("message")
            && obj.contains_key("timestamp")
            && !obj.contains_key("kind"))
    {
        return Some(Export::Eks);
    }
    let is_aks_record = |r: &Value| {
        r.get("category")
            .and_then(Value::as_str)
            .is_some_and(|c| c.starts_with("kube-audit"))
    };
    if obj.get("records").is_some_and(Value::is_array) || is_aks_record(doc) {
        return Some(Export::Aks);
    }
    None
}

/// Unwraps one document of a known export.
pub fn unwrap(export: Export, doc: Value) -> Unwrapped {
    let mut out = Unwrapped::default();
    match export {
        Export::Eks => {
            let entries = match doc {
                Value::Object(mut m) => {
                    match m.remove("logEvents").or_else(|| m.remove("events")) {
                        Some(Value::Array(items)) => items,
                        Some(other) => {
                            out.refused
                                .push(("`logEvents`/`events` must be a list".into(), other));
                            return out;
                        }
                        None => vec![Value::Object(m)],
                    }
                }
                other => vec![other],
            };
            for entry in entries {
                match entry
                    .get("message")
                    .and_then(Value::as_str)
                    .map(embedded_json)
                {
                    Some(Ok(ev)) => out.events.push(ev),
                    Some(Err(e)) => out.refused.push((format!("EKS message: {e}"), entry)),
                    None => out
                        .refused
                        .push(("EKS log event without a `message`".into(), entry)),
                }
            }
        }
        Export::Aks => {
            let records = match doc {
                Value::Object(mut m) if m.contains_key("records") => match m.remove("records") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                },
                other => vec![other],
            };
            for record in records {
                let category = record
                    .get("category")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !category.starts_with("kube-audit") {
                    // Other diagnostic categories (kube-apiserver, guard, ...) share the stream.
                    continue;
                }
                match record
                    .pointer("/properties/log")
                    .and_then(Value::as_str)
                    .map(embedded_json)
                {
                    Some(Ok(ev)) => out.events.push(ev),
                    Some(Err(e)) => out
                        .refused
                        .push((format!("AKS properties.log: {e}"), record)),
                    None => out.refused.push((
                        "AKS kube-audit record without properties.log".into(),
                        record,
                    )),
                }
            }
        }
        Export::Gke => match gke_event(&doc) {
            Ok(ev) => out.events.push(ev),
            Err(e) => out.refused.push((e, doc)),
        },
    }
    out
}

fn embedded_json(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Rebuilds a Kubernetes audit event from a GKE Cloud Audit Logs entry.
fn gke_event(entry: &Value) -> Result<Value, String> {
    let p = entry
        .get("protoPayload")
        .filter(|p| p.is_object())
        .ok_or("protoPayload must be an object")?;
    let s = |v: &Value, ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(str::to_string);
    if s(p, "/serviceName").is_some_and(|n| n != "k8s.io") {
        return Err(format!(
            "not a Kubernetes audit entry (serviceName {})",
            s(p, "/serviceName").unwrap_or_default()
        ));
    }
    // methodName: io.k8s.core.v1.pods.exec.create, io.k8s.apps.v1.deployments.list, ...
    let method = s(p, "/methodName").ok_or("protoPayload.methodName is missing")?;
    let verb = method
        .rsplit('.')
        .next()
        .filter(|v| !v.is_empty())
        .ok_or("methodName has no verb")?
        .to_string();
    // resourceName: core/v1/namespaces/shop/pods/web/exec, apps/v1/namespaces/x/deployments,
    // rbac.authorization.k8s.io/v1/clusterrolebindings/name
    let resource_name = s(p, "/resourceName").unwrap_or_default();
    let object_ref = object_ref_of(&resource_name);
    let timestamp = s(entry, "/timestamp").ok_or("timestamp is missing")?;
    let audit_id = s(entry, "/operation/id")
        .or_else(|| s(entry, "/insertId"))
        .ok_or("neither operation.id nor insertId is set")?;
    let user = s(p, "/authenticationInfo/principalEmail")
        .or_else(|| s(p, "/authenticationInfo/principalSubject"))
        .unwrap_or_default();
    let code = p
        .pointer("/status/code")
        .and_then(Value::as_i64)
        .map_or(200, grpc_to_http);
    let mut ev = Map::new();
    ev.insert("kind".into(), "Event".into());
    ev.insert("apiVersion".into(), "audit.k8s.io/v1".into());
    ev.insert("auditID".into(), audit_id.into());
    ev.insert("stage".into(), "ResponseComplete".into());
    let level = if p.get("request").is_some() {
        "Request"
    } else {
        "Metadata"
    };
    ev.insert("level".into(), level.into());
    ev.insert("verb".into(), verb.into());
    ev.insert("requestURI".into(), format!("/{resource_name}").into());
    ev.insert("user".into(), json!({"username": user}));
    if let Some(ip) = s(p, "/requestMetadata/callerIp") {
        ev.insert("sourceIPs".into(), json!([ip]));
    }
    if let Some(ua) = s(p, "/requestMetadata/callerSuppliedUserAgent") {
        ev.insert("userAgent".into(), ua.into());
    }
    ev.insert("objectRef".into(), object_ref);
    ev.insert("responseStatus".into(), json!({"code": code}));
    if let Some(req) = p.get("request") {
        ev.insert("requestObject".into(), req.clone());
    }
    ev.insert("stageTimestamp".into(), timestamp.clone().into());
    ev.insert("requestReceivedTimestamp".into(), timestamp.into());
    if let Some(Value::Object(labels)) = entry.get("labels") {
        ev.insert("annotations".into(), Value::Object(labels.clone()));
    }
    Ok(Value::Object(ev))
}

/// `objectRef` from a GKE resourceName (`group/version/[namespaces/ns/]resource[/name[/sub]]`).
fn object_ref_of(resource_name: &str) -> Value {
    let parts: Vec<&str> = resource_name.split('/').filter(|p| !p.is_empty()).collect();
    let (group, version, rest) = match parts.as_slice() {
        [g, v, rest @ ..] => (*g, *v, rest),
        _ => return json!({}),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        other => (None, other),
    };
    let mut r = Map::new();
    r.insert(
        "apiGroup".into(),
        if group == "core" { "" } else { group }.into(),
    );
    r.insert("apiVersion".into(), version.into());
    if let Some(ns) = namespace {
        r.insert("namespace".into(), ns.into());
    }
    match rest {
        [resource] => {
            r.insert("resource".into(), (*resource).into());
        }
        [resource, name] => {
            r.insert("resource".into(), (*resource).into());
            r.insert("name".into(), (*name).into());
        }
        [resource, name, sub, ..] => {
            r.insert("resource".into(), (*resource).into());
            r.insert("name".into(), (*name).into());
            r.insert("subresource".into(), (*sub).into());
        }
        [] => {
            // `namespaces/<ns>` itself: the namespace object.
            if let Some(ns) = namespace {
                r.insert("resource".into(), "namespaces".into());
                r.insert("name".into(), ns.into());
            }
        }
    }
    Value::Object(r)
}

/// The HTTP status for a google.rpc.Code.
fn grpc_to_http(code: i64) -> i64 {
    match code {
        0 => 200,
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        1 => 499,
        12 => 501,
        14 => 503,
        4 => 504,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a-1","stage":"ResponseComplete","verb":"create","requestURI":"/api/v1/namespaces/shop/pods/web/exec","user":{"username":"mallory"},"objectRef":{"resource":"pods","namespace":"shop","name":"web","subresource":"exec"},"stageTimestamp":"2026-11-27T01:00:00.000000Z"}"#;

    #[test]
    fn eks_subscription_and_cli_payloads() {
        let sub = json!({"messageType":"DATA_MESSAGE","logGroup":"/aws/eks/prod/cluster",
            "logStream":"kube-apiserver-audit-0123","logEvents":[{"id":"1","timestamp":1,"message":AUDIT},{"id":"2","timestamp":1,"message":"oops"}]});
        assert_eq!(detect(&sub), Some(Export::Eks));
        let u = unwrap(Export::Eks, sub);
        assert_eq!((u.events.len(), u.refused.len()), (1, 1));
        assert_eq!(u.events[0]["auditID"], "a-1");
        let cli = json!({"events":[{"logStreamName":"kube-apiserver-audit-1","timestamp":1,"message":AUDIT}]});
        assert_eq!(unwrap(detect(&cli).expect("eks"), cli).events.len(), 1);
    }

    #[test]
    fn aks_records_keep_only_audit_categories() {
        let doc = json!({"records":[
            {"category":"kube-audit","properties":{"log":AUDIT,"stream":"stdout"}},
            {"category":"kube-apiserver","properties":{"log":"I1127 started"}}]});
        assert_eq!(detect(&doc), Some(Export::Aks));
        let u = unwrap(Export::Aks, doc);
        assert_eq!((u.events.len(), u.refused.len()), (1, 0));
    }

    #[test]
    fn gke_entries_become_audit_events() {
        let entry = json!({"insertId":"x1","operation":{"id":"op-7","producer":"k8s.io"},
            "protoPayload":{"@type":"type.googleapis.com/google.cloud.audit.AuditLog",
              "authenticationInfo":{"principalEmail":"dev@example.com"},
              "requestMetadata":{"callerIp":"203.0.113.9","callerSuppliedUserAgent":"kubectl/v1.31"},
              "serviceName":"k8s.io","methodName":"io.k8s.core.v1.pods.exec.create",
              "resourceName":"core/v1/namespaces/shop/pods/web/exec","status":{"code":7}},
            "timestamp":"2026-11-27T01:00:00.123456Z","labels":{"authorization.k8s.io/decision":"forbid"}});
        assert_eq!(detect(&entry), Some(Export::Gke));
        let u = unwrap(Export::Gke, entry);
        let ev = &u.events[0];
        assert_eq!(
            (ev["verb"].as_str(), ev["auditID"].as_str()),
            (Some("create"), Some("op-7"))
        );
        assert_eq!(ev["objectRef"]["subresource"], "exec");
        assert_eq!(ev["objectRef"]["namespace"], "shop");
        assert_eq!(ev["objectRef"]["apiGroup"], "");
        assert_eq!(ev["responseStatus"]["code"], 403);
        assert_eq!(ev["user"]["username"], "dev@example.com");
        let rb = object_ref_of("rbac.authorization.k8s.io/v1/clusterrolebindings/root");
        assert_eq!(rb["resource"], "clusterrolebindings");
        assert_eq!(rb["name"], "root");
        assert!(rb.get("namespace").is_none());
    }

    #[test]
    fn plain_kubernetes_events_are_not_mistaken_for_exports() {
        let ev: Value = serde_json::from_str(AUDIT).expect("json");
        assert_eq!(detect(&ev), None);
        assert_eq!(detect(&json!({"kind":"EventList","items":[]})), None);
    }
}
