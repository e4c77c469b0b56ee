//! What every fuzz target checks on top of "does not panic": the invariants the parsers promise
//! (records round-trip through the wire codec, secrets leave ingest only as keyed hashes).
//!
//! The targets live in `fuzz_targets/`; `scripts/fuzz.sh` builds and runs them (docs/fuzzing.md).

use std::fmt::Debug;
use std::sync::LazyLock;

use apache_avro::Schema;
use korvid_ingest::sanitize::Sanitizer;
use korvid_schemas::codec::{Decoder, Framing, Record, encode};
use korvid_schemas::{
    Alert, AuditEvent, DeadLetter, DedupState, Finding, GraphWindow, ImageScan, KubeEvent,
    ObjectChange,
};
use serde_json::Value;

/// Cluster id given to every parser.
pub const CLUSTER: &str = "fuzz";
/// What a redacted value starts with (`Sanitizer::hash`).
pub const HASH_PREFIX: &str = "hmac-sha256:";
/// The annotation that carries a full copy of an applied object.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Keys whose subtrees the scan-report sanitiser removes (Trivy's secret findings).
pub const SCAN_SECRET_KEYS: &[&str] = &["Secrets", "Match", "Code", "Content", "Highlighted"];
/// Schema Registry id the decoders know as the current schema.
pub const CURRENT_SCHEMA_ID: u32 = 1;
/// Schema Registry id the decoders know as the released v1 schema.
pub const RELEASED_SCHEMA_ID: u32 = 2;

/// The sanitiser every target uses (a fixed key, as `ingest.redaction_key` gives).
pub fn sanitizer() -> &'static Sanitizer {
    static SANITIZER: LazyLock<Sanitizer> =
        LazyLock::new(|| Sanitizer::new(b"korvid-fuzz-redaction-key"));
    &SANITIZER
}

/// A decoder per record type, knowing the current and released schemas by fingerprint and by
/// registry id, as a consumer that has fetched both from the registry does.
pub struct Decoders {
    /// `AuditEvent`.
    pub audit_event: Decoder<AuditEvent>,
    /// `ObjectChange`.
    pub object_change: Decoder<ObjectChange>,
    /// `KubeEvent`.
    pub kube_event: Decoder<KubeEvent>,
    /// `ImageScan`.
    pub image_scan: Decoder<ImageScan>,
    /// `GraphWindow`.
    pub graph_window: Decoder<GraphWindow>,
    /// `Finding`.
    pub finding: Decoder<Finding>,
    /// `Alert`.
    pub alert: Decoder<Alert>,
    /// `DeadLetter`.
    pub dead_letter: Decoder<DeadLetter>,
    /// `DedupState`.
    pub dedup_state: Decoder<DedupState>,
}

/// Built once per process.
pub static DECODERS: LazyLock<Decoders> = LazyLock::new(|| Decoders {
    audit_event: decoder(),
    object_change: decoder(),
    kube_event: decoder(),
    image_scan: decoder(),
    graph_window: decoder(),
    finding: decoder(),
    alert: decoder(),
    dead_letter: decoder(),
    dedup_state: decoder(),
});

fn decoder<R: Record>() -> Decoder<R> {
    let mut d = Decoder::<R>::new();
    d.add_schema_id(CURRENT_SCHEMA_ID, R::compiled().schema().clone());
    if let Some(avsc) = korvid_schemas::released::released_versions(R::NAME).first() {
        let released = Schema::parse_str(avsc).expect("released schemas parse (a schemas test)");
        d.add_schema_id(RELEASED_SCHEMA_ID, released);
    }
    d
}

/// Encodes `record` in both framings and decodes it back: it must come back equal.
pub fn assert_roundtrip<R: Record + PartialEq + Debug>(record: &R, decoder: &Decoder<R>) {
    for framing in [
        Framing::SingleObject,
        Framing::Confluent {
            schema_id: CURRENT_SCHEMA_ID,
        },
    ] {
        let bytes = encode(record, framing)
            .unwrap_or_else(|e| panic!("{} does not encode: {e}\n{record:?}", R::NAME));
        let back = decoder
            .decode(&bytes)
            .unwrap_or_else(|e| panic!("{} does not decode what it encoded: {e}", R::NAME));
        // A NaN makes a record unequal to itself; such a record is only checked for decoding.
        #[allow(clippy::eq_op)]
        let comparable = record == record;
        if comparable {
            assert_eq!(&back, record, "{} changed through {framing:?}", R::NAME);
        }
    }
}

/// What the text redaction (for bodies that are not JSON) puts in place of a value.
pub const REDACTED_TEXT: &str = "<redacted>";

/// Whether `v` is a value the sanitiser wrote: a keyed hash, or the text redaction's marker.
pub fn is_redacted(v: &Value) -> bool {
    is_hash(v) || v.as_str() == Some(REDACTED_TEXT)
}

/// Whether `v` is a keyed hash as the sanitiser writes it.
pub fn is_hash(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.strip_prefix(HASH_PREFIX)
            .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Calls `f` on every object in `v`, depth first.
pub fn for_each_object(v: &Value, f: &mut impl FnMut(&serde_json::Map<String, Value>)) {
    match v {
        Value::Object(map) => {
            f(map);
            map.values().for_each(|x| for_each_object(x, f));
        }
        Value::Array(items) => items.iter().for_each(|x| for_each_object(x, f)),
        _ => {}
    }
}

/// Panics when a Secret's `data`/`stringData` value or a last-applied annotation anywhere in
/// `v` is not redacted.
pub fn assert_no_secret_values(v: &Value, context: &str) {
    for_each_object(v, &mut |obj| {
        if obj.get("kind").and_then(Value::as_str) == Some("Secret") {
            assert_fields_hashed(obj, &["data", "stringData"], context);
        }
        if let Some(Value::Object(annotations)) = obj.get("annotations")
            && let Some(copy) = annotations.get(LAST_APPLIED)
        {
            assert!(
                is_redacted(copy),
                "{context}: {LAST_APPLIED} left as {copy}\nin {v}"
            );
        }
    });
}

/// Panics when a value of one of `fields` (each a map) in `obj` is not redacted.
pub fn assert_fields_hashed(obj: &serde_json::Map<String, Value>, fields: &[&str], context: &str) {
    for field in fields {
        if let Some(Value::Object(values)) = obj.get(*field) {
            for (key, value) in values {
                assert!(
                    is_redacted(value),
                    "{context}: Secret {field}.{key} left as {value}"
                );
            }
        }
    }
}

/// The string values of every Secret's `data`/`stringData` in `v`.
pub fn secret_strings(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for_each_object(v, &mut |obj| {
        if obj.get("kind").and_then(Value::as_str) == Some("Secret") {
            for field in ["data", "stringData"] {
                if let Some(Value::Object(values)) = obj.get(field) {
                    out.extend(
                        values
                            .values()
                            .filter_map(Value::as_str)
                            .map(str::to_string),
                    );
                }
            }
        }
    });
    out
}

/// Every string value under one of `keys`, at any depth below it.
pub fn strings_under(v: &Value, keys: &[&str]) -> Vec<String> {
    fn all_strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|x| all_strings(x, out)),
            Value::Object(map) => map.values().for_each(|x| all_strings(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for_each_object(v, &mut |obj| {
        for key in keys {
            if let Some(x) = obj.get(*key) {
                all_strings(x, &mut out);
            }
        }
    });
    out
}

/// A secret value the text redaction must not let through when `canonical` (compact JSON) is
/// cut at `cut`: one that looks like real secret material (so it cannot be formed by the
/// redaction marker and its surroundings), occurs once in the document, and lies wholly
/// before the cut. Returns its quoted form, as it appears in the text.
pub fn quoted_if_checkable(secret: &str, canonical: &[u8], cut: usize) -> Option<Vec<u8>> {
    let looks_secret = secret.len() >= 6
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=_.-".contains(&b));
    if !looks_secret {
        return None;
    }
    let quoted = format!("\"{secret}\"").into_bytes();
    let mut at = canonical
        .windows(quoted.len())
        .enumerate()
        .filter(|(_, w)| *w == quoted.as_slice())
        .map(|(i, _)| i);
    let first = at.next()?;
    (at.next().is_none() && first + quoted.len() <= cut).then_some(quoted)
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks an AuditEvent a parser produced.
pub fn check_audit_event(ev: &AuditEvent) {
    assert_eq!(ev.cluster, CLUSTER);
    assert!(
        !ev.audit_id.is_empty() && !ev.verb.is_empty() && !ev.user.is_empty(),
        "an event without auditID, verb or user was accepted: {ev:?}"
    );
    if let Some(body) = &ev.request_object {
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("request_object is not JSON ({e}): {body}"));
        assert_no_secret_values(&v, "AuditEvent.request_object");
        if ev.resource.as_deref() == Some("secrets")
            && let Value::Object(obj) = &v
        {
            assert_fields_hashed(obj, &["data", "stringData"], "secrets requestObject");
        }
    }
    let _ = korvid_ingest::audit::partition_key(ev);
    assert_roundtrip(ev, &DECODERS.audit_event);
}

/// Panics when an object in a sanitised scan report still holds a secret finding.
pub fn assert_no_secret_findings(report: &Value, context: &str) {
    for_each_object(report, &mut |obj| {
        for key in SCAN_SECRET_KEYS {
            if let Some(v) = obj.get(*key) {
                assert!(
                    v.as_str() == Some(REDACTED_TEXT),
                    "{context}: `{key}` kept as {v}"
                );
            }
        }
    });
}

/// Checks what is dead-lettered for an audit event that was refused: its request and response
/// bodies are sanitised (the rest of a refused event is not a Kubernetes object).
pub fn check_rejected_audit(raw: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(raw) else {
        return;
    };
    for field in ["requestObject", "responseObject"] {
        if let Some(body) = v.get(field) {
            assert_no_secret_values(body, "rejected audit event");
        }
    }
}

/// Checks an ObjectChange a parser produced.
pub fn check_object_change(c: &ObjectChange) {
    assert_eq!(c.cluster, CLUSTER);
    assert!(
        !c.uid.is_empty() && !c.kind.is_empty() && !c.api_version.is_empty() && !c.name.is_empty(),
        "an object without uid, kind, apiVersion or name was accepted: {c:?}"
    );
    assert!(c.namespace.as_deref() != Some(""), "empty namespace kept");
    if let Some(json) = &c.object_json {
        assert!(json.len() <= korvid_ingest::objects::MAX_OBJECT_BYTES);
        let v: Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("object_json is not JSON ({e}): {json}"));
        assert!(
            v.pointer("/metadata/managedFields").is_none(),
            "managedFields kept"
        );
        assert_no_secret_values(&v, "ObjectChange.object_json");
        if c.kind == "Secret"
            && let Value::Object(obj) = &v
        {
            assert_fields_hashed(obj, &["data", "stringData", "binaryData"], "Secret object");
        }
    }
    assert_roundtrip(c, &DECODERS.object_change);
    let gone = korvid_ingest::objects::identity(c).deletion(CLUSTER, 0);
    assert_roundtrip(&gone, &DECODERS.object_change);
}

/// Checks a KubeEvent a parser produced.
pub fn check_kube_event(ev: &KubeEvent) {
    assert_eq!(ev.cluster, CLUSTER);
    assert!(ev.count >= 0, "negative count {}", ev.count);
    assert_roundtrip(ev, &DECODERS.kube_event);
}

/// Checks an ImageScan a parser produced; `tallied`: its counts were counted from its list (a
/// Trivy Operator report brings its own summary, which also counts what the list left out).
pub fn check_image_scan(scan: &ImageScan, tallied: bool) {
    assert_eq!(scan.cluster, CLUSTER);
    assert!(
        scan.image_digest.starts_with("sha256:"),
        "digest {:?}",
        scan.image_digest
    );
    let c = scan.counts;
    let counted = [c.critical, c.high, c.medium, c.low, c.unknown]
        .iter()
        .map(|n| i64::from(*n))
        .sum::<i64>();
    if tallied {
        assert_eq!(
            counted,
            scan.vulnerabilities.len() as i64,
            "severity counts do not add up"
        );
    }
    assert_roundtrip(scan, &DECODERS.image_scan);
}
