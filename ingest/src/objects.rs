//! Kubernetes objects as records: a watched or imported object becomes an ObjectChange (or, for
//! core/v1 Events, a KubeEvent), with `managedFields` stripped and secrets replaced by keyed
//! hashes. Watchers and snapshot import share this code, so online and offline see the same
//! records.

use std::collections::HashMap;

use korvid_schemas::{KubeEvent, ObjectChange, ObjectOp};
use serde_json::Value;

use crate::sanitize::Sanitizer;

/// Objects bigger than this (as JSON, after sanitising) are refused: etcd itself caps objects
/// at about 1.5 MiB, so anything larger is not a real object.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024;

/// Why an object was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ObjectError {
    /// The input is not a Kubernetes object.
    #[error("not a Kubernetes object: {0}")]
    NotAnObject(String),
    /// The object is larger than [`MAX_OBJECT_BYTES`].
    #[error("object {0} is {1} bytes, over the {MAX_OBJECT_BYTES}-byte limit")]
    TooLarge(String, usize),
}

impl ObjectError {
    /// Stable name for metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectError::NotAnObject(_) => "not_an_object",
            ObjectError::TooLarge(..) => "too_large",
        }
    }
}

/// Identity of an object, enough to write its deletion once the object itself is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIdentity {
    /// `metadata.uid`.
    pub uid: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectIdentity {
    /// The record saying this object is gone (no object body).
    pub fn deletion(&self, cluster: &str, now_ms: i64) -> ObjectChange {
        ObjectChange {
            cluster: cluster.to_string(),
            event_time: now_ms,
            op: ObjectOp::Delete,
            uid: self.uid.clone(),
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            resource_version: None,
            labels: HashMap::new(),
            object_json: None,
        }
    }
}

/// Kafka key of an object on the compacted objects topic.
pub fn object_key(cluster: &str, uid: &str) -> String {
    format!("{cluster}/{uid}")
}

/// Builds the ObjectChange for `object` (sanitised here).
///
/// `api_version` and `kind` fill in what list items often leave out. Objects without a uid
/// (manifests that never reached a cluster) get a stable one derived from their identity.
pub fn object_change(
    cluster: &str,
    op: ObjectOp,
    mut object: Value,
    type_hint: Option<(&str, &str)>,
    sanitizer: &Sanitizer,
    now_ms: i64,
) -> Result<ObjectChange, ObjectError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ObjectError::NotAnObject(format!(
            "expected a JSON object, got {}",
            json_type(&object)
        )));
    };
    if let Some((api_version, kind)) = type_hint {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(api_version.to_string()));
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.to_string()));
    }
    let api_version = str_field(map.get("apiVersion"), "apiVersion")?;
    let kind = str_field(map.get("kind"), "kind")?;
    let Some(Value::Object(meta)) = map.get_mut("metadata") else {
        return Err(ObjectError::NotAnObject(format!(
            "{kind} has no metadata object"
        )));
    };
    meta.remove("managedFields");
    let name = match meta.get("name").or_else(|| meta.get("generateName")) {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(ObjectError::NotAnObject(format!(
                "{kind} has no metadata.name"
            )));
        }
    };
    let namespace = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let uid = match meta.get("uid").and_then(Value::as_str) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => manifest_uid(&api_version, &kind, namespace.as_deref(), &name),
    };
    let resource_version = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let labels = match meta.get("labels") {
        Some(Value::Object(l)) => l
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect(),
        _ => HashMap::new(),
    };
    let clean = reduce(&kind, object, sanitizer);
    let json = clean.to_string();
    if json.len() > MAX_OBJECT_BYTES {
        return Err(ObjectError::TooLarge(
            format!("{kind} {}", qualified(namespace.as_deref(), &name)),
            json.len(),
        ));
    }
    Ok(ObjectChange {
        cluster: cluster.to_string(),
        event_time: now_ms,
        op,
        uid,
        api_version,
        kind,
        namespace,
        name,
        resource_version,
        labels,
        object_json: Some(json),
    })
}

/// The identity part of an ObjectChange.
pub fn identity(change: &ObjectChange) -> ObjectIdentity {
    ObjectIdentity {
        uid: change.uid.clone(),
        api_version: change.api_version.clone(),
        kind: change.kind.clone(),
        namespace: change.namespace.clone(),
        name: change.name.clone(),
    }
}

/// Secrets keep metadata, type and key names (each value a keyed hash, so a changed or reused
/// value is still visible); ConfigMaps keep metadata and key names (values hashed); everything
/// else goes through the general sanitiser (env values, last-applied annotations).
fn reduce(kind: &str, object: Value, sanitizer: &Sanitizer) -> Value {
    match kind {
        "Secret" | "ConfigMap" => {
            let Value::Object(mut map) = object else {
                return object;
            };
            let mut out = serde_json::Map::new();
            for field in ["apiVersion", "kind", "type", "immutable"] {
                if let Some(v) = map.remove(field) {
                    out.insert(field.to_string(), v);
                }
            }
            // Annotations can carry a full copy (last-applied); the sanitiser hashes it.
            if let Some(meta) = map.remove("metadata") {
                out.insert("metadata".into(), sanitizer.sanitize_object(None, meta));
            }
            for field in ["data", "stringData", "binaryData"] {
                if let Some(Value::Object(values)) = map.remove(field) {
                    let hashed = values
                        .into_iter()
                        .map(|(k, v)| {
                            let text = match v {
                                Value::String(s) => s,
                                other => other.to_string(),
                            };
                            (k, Value::String(sanitizer.hash(&text)))
                        })
                        .collect();
                    out.insert(field.to_string(), Value::Object(hashed));
                }
            }
            Value::Object(out)
        }
        _ => sanitizer.sanitize_object(None, object),
    }
}

/// Converts a core/v1 (or events.k8s.io/v1) Event object into a KubeEvent.
pub fn kube_event(cluster: &str, event: &Value, now_ms: i64) -> Result<KubeEvent, ObjectError> {
    let s = |p: &str| event.pointer(p).and_then(Value::as_str).map(str::to_string);
    let uid = s("/metadata/uid")
        .ok_or_else(|| ObjectError::NotAnObject("Event has no metadata.uid".into()))?;
    // core/v1 names the object `involvedObject`; events.k8s.io/v1 calls it `regarding`.
    let involved = event
        .get("involvedObject")
        .or_else(|| event.get("regarding"))
        .ok_or_else(|| ObjectError::NotAnObject(format!("Event {uid} has no involvedObject")))?;
    let i = |f: &str| involved.get(f).and_then(Value::as_str).map(str::to_string);
    let time = [
        "/lastTimestamp",
        "/eventTime",
        "/series/lastObservedTime",
        "/firstTimestamp",
    ]
    .iter()
    .filter_map(|p| event.pointer(p).and_then(Value::as_str))
    .find_map(parse_time)
    .or_else(|| {
        event
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .and_then(parse_time)
    })
    .unwrap_or(now_ms);
    let count = event
        .get("count")
        .or_else(|| event.pointer("/series/count"))
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .clamp(0, i64::from(i32::MAX)) as i32;
    Ok(KubeEvent {
        cluster: cluster.to_string(),
        event_time: time,
        uid,
        namespace: s("/metadata/namespace"),
        event_type: s("/type").unwrap_or_else(|| "Normal".into()),
        reason: s("/reason").unwrap_or_default(),
        message: s("/message").or_else(|| s("/note")).unwrap_or_default(),
        involved_kind: i("kind").unwrap_or_default(),
        involved_namespace: i("namespace"),
        involved_name: i("name").unwrap_or_default(),
        involved_uid: i("uid"),
        source_component: s("/source/component")
            .or_else(|| s("/reportingController"))
            .or_else(|| s("/reportingComponent")),
        count,
    })
}

fn parse_time(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// A stable uid for an object that has none (a manifest file), derived from its identity.
fn manifest_uid(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let digest = Sha256::digest(format!(
        "{group}\u{0}{kind}\u{0}{}\u{0}{name}",
        namespace.unwrap_or("")
    ));
    format!("manifest-{}", hex::encode(&digest[..16]))
}

fn str_field(v: Option<&Value>, field: &str) -> Result<String, ObjectError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(ObjectError::NotAnObject(format!(
            "{field} must be a non-empty string, got {}",
            json_type(other)
        ))),
        None => Err(ObjectError::NotAnObject(format!("{field} is missing"))),
    }
}

fn qualified(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sanitizer() -> Sanitizer {
        Sanitizer::new(b"0123456789abcdef")
    }

    #[test]
    fn managed_fields_go_and_identity_stays() {
        let pod = json!({"metadata":{"name":"web","namespace":"shop","uid":"u1","resourceVersion":"7",
            "labels":{"app":"web"},"managedFields":[{"manager":"kubectl"}]},"spec":{"containers":[]}});
        let c = object_change(
            "c1",
            ObjectOp::Upsert,
            pod,
            Some(("v1", "Pod")),
            &sanitizer(),
            5,
        )
        .expect("pod");
        assert_eq!(
            (c.kind.as_str(), c.api_version.as_str(), c.uid.as_str()),
            ("Pod", "v1", "u1")
        );
        assert_eq!(c.namespace.as_deref(), Some("shop"));
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        let json = c.object_json.expect("body");
        assert!(!json.contains("managedFields") && json.contains("\"kind\":\"Pod\""));
    }

    #[test]
    fn secrets_keep_only_metadata_type_and_hashed_keys() {
        let secret = json!({"apiVersion":"v1","kind":"Secret","type":"Opaque",
            "metadata":{"name":"db","namespace":"shop","uid":"u2"},
            "data":{"password":"aHVudGVyMg=="},"stringData":{"token":"hunter2"},"extra":"hunter2"});
        let c =
            object_change("c1", ObjectOp::Snapshot, secret, None, &sanitizer(), 5).expect("secret");
        let json = c.object_json.expect("body");
        assert!(
            !json.contains("hunter2") && !json.contains("aHVudGVyMg=="),
            "{json}"
        );
        assert!(json.contains("\"password\":\"hmac-sha256:") && json.contains("Opaque"));
        assert!(!json.contains("extra"));
    }

    #[test]
    fn configmap_values_are_hashed_but_keys_kept() {
        let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"coredns","namespace":"kube-system","uid":"u3"},
            "data":{"Corefile":".:53 { forward . 10.0.0.1 }"}});
        let c = object_change("c1", ObjectOp::Upsert, cm, None, &sanitizer(), 5).expect("cm");
        let json = c.object_json.expect("body");
        assert!(
            json.contains("Corefile") && !json.contains("forward"),
            "{json}"
        );
    }

    #[test]
    fn manifests_without_uid_get_a_stable_one() {
        let a = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"shop"}});
        let b = json!({"apiVersion":"apps/v1beta2","kind":"Deployment","metadata":{"name":"web","namespace":"shop"}});
        let ca = object_change("c", ObjectOp::Snapshot, a, None, &sanitizer(), 1).expect("a");
        let cb = object_change("c", ObjectOp::Snapshot, b, None, &sanitizer(), 1).expect("b");
        assert_eq!(
            ca.uid, cb.uid,
            "the version does not change the object's identity"
        );
        assert!(ca.uid.starts_with("manifest-"));
    }

    #[test]
    fn non_objects_are_refused_with_reasons() {
        let s = sanitizer();
        for (input, want) in [
            (json!([1]), "an array"),
            (json!({"kind":"Pod","apiVersion":"v1"}), "no metadata"),
            (
                json!({"kind":"Pod","apiVersion":"v1","metadata":{}}),
                "no metadata.name",
            ),
            (
                json!({"kind":7,"apiVersion":"v1","metadata":{"name":"x"}}),
                "kind must be",
            ),
        ] {
            let err =
                object_change("c", ObjectOp::Upsert, input, None, &s, 1).expect_err("refused");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn events_become_kube_events() {
        let ev = json!({"apiVersion":"v1","kind":"Event","metadata":{"uid":"e1","namespace":"shop"},
            "involvedObject":{"kind":"Pod","name":"web","namespace":"shop","uid":"p1"},
            "reason":"BackOff","message":"Back-off restarting failed container","type":"Warning",
            "count":12,"lastTimestamp":"2026-11-27T01:00:00Z","source":{"component":"kubelet"}});
        let k = kube_event("c1", &ev, 0).expect("event");
        assert_eq!(
            (k.reason.as_str(), k.count, k.event_type.as_str()),
            ("BackOff", 12, "Warning")
        );
        assert_eq!(k.event_time, 1_795_741_200_000);
        assert_eq!(k.source_component.as_deref(), Some("kubelet"));
        assert_eq!(k.involved_uid.as_deref(), Some("p1"));
    }
}
