//! Property tests for every parser of untrusted input: arbitrary bytes, arbitrary JSON and
//! mutated real documents must give a result or a clear error, never a panic or a hang; split
//! streams must read the same as whole ones; and planted secret values never survive
//! sanitising, wherever they sit.

use korvid_ingest::audit::{parse_body, parse_value};
use korvid_ingest::audit_log::{DocumentSplitter, Piece};
use korvid_ingest::managed;
use korvid_ingest::objects::object_change;
use korvid_ingest::sanitize::Sanitizer;
use korvid_ingest::scans::{parse_scan, vulnerability_report};
use korvid_ingest::snapshot::parse_documents;
use korvid_schemas::ObjectOp;
use proptest::prelude::*;
use serde_json::{Value, json};

const KEYS: &[&str] = &[
    "kind",
    "apiVersion",
    "items",
    "auditID",
    "verb",
    "user",
    "username",
    "groups",
    "objectRef",
    "resource",
    "namespace",
    "name",
    "subresource",
    "stageTimestamp",
    "requestObject",
    "responseObject",
    "metadata",
    "uid",
    "labels",
    "annotations",
    "data",
    "stringData",
    "env",
    "value",
    "spec",
    "containers",
    "protoPayload",
    "methodName",
    "resourceName",
    "operation",
    "id",
    "timestamp",
    "logEvents",
    "events",
    "message",
    "records",
    "category",
    "properties",
    "log",
    "report",
    "artifact",
    "digest",
    "vulnerabilities",
    "SchemaVersion",
    "ArtifactName",
    "Results",
    "Vulnerabilities",
    "Metadata",
    "RepoDigests",
    "matches",
    "source",
    "target",
    "x",
];
const WORDS: &[&str] = &[
    "Event",
    "EventList",
    "audit.k8s.io/v1",
    "v1",
    "Secret",
    "ConfigMap",
    "Pod",
    "List",
    "k8s.io",
    "kube-audit",
    "create",
    "secrets",
    "2026-11-27T01:00:00Z",
    "sha256:abc",
    "",
    "io.k8s.core.v1.pods.exec.create",
    "core/v1/namespaces/a/pods/b/exec",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,16}".prop_map(Value::String),
        prop::sample::select(WORDS).prop_map(|w| Value::String(w.to_string())),
    ];
    leaf.prop_recursive(5, 80, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..7).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Real documents of every format, to mutate.
fn samples() -> Vec<Vec<u8>> {
    vec![
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a","stage":"ResponseComplete","verb":"create","user":{"username":"u","groups":["g"]},"objectRef":{"resource":"secrets","namespace":"n","name":"s"},"requestObject":{"kind":"Secret","data":{"k":"c2VjcmV0"}},"stageTimestamp":"2026-11-27T01:00:00.000000Z"}]}"#.to_vec(),
        br#"{"SchemaVersion":2,"ArtifactName":"nginx:1.25","Metadata":{"RepoDigests":["nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31"]},"Results":[{"Vulnerabilities":[{"VulnerabilityID":"CVE-1","PkgName":"p","InstalledVersion":"1","Severity":"HIGH","CVSS":{"nvd":{"V3Score":7.5}}}]}]}"#.to_vec(),
        br#"{"matches":[{"vulnerability":{"id":"CVE-2","severity":"Critical"},"artifact":{"name":"xz","version":"5.6.0"}}],"source":{"target":{"userInput":"a/b:c","manifestDigest":"sha256:11"}}}"#.to_vec(),
        br#"{"logGroup":"/aws/eks/c/cluster","logEvents":[{"timestamp":1,"message":"{\"kind\":\"Event\",\"auditID\":\"x\",\"verb\":\"get\",\"user\":{\"username\":\"u\"},\"stageTimestamp\":\"2026-11-27T01:00:00Z\"}"}]}"#.to_vec(),
        br#"{"protoPayload":{"serviceName":"k8s.io","methodName":"io.k8s.core.v1.secrets.get","resourceName":"core/v1/namespaces/a/secrets/b","authenticationInfo":{"principalEmail":"e"}},"timestamp":"2026-11-27T01:00:00Z","insertId":"i"}"#.to_vec(),
        b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  k: v\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".to_vec(),
    ]
}

fn good_event() -> Value {
    json!({"auditID": "g", "stage": "ResponseComplete", "level": "Request", "verb": "create",
        "user": {"username": "u", "groups": ["g"]}, "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": "secrets", "namespace": "n", "name": "s"},
        "requestObject": {"kind": "Secret", "data": {"k": "c2VjcmV0"}},
        "stageTimestamp": "2026-11-27T01:00:00.000000Z"})
}

fn sanitizer() -> Sanitizer {
    Sanitizer::new(b"property-test-key-0123")
}

/// Every error message says something.
fn clear<E: std::fmt::Display>(e: &E) -> bool {
    e.to_string().trim().len() > 8
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failures are printed with their minimal input; nothing is written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn audit_parsers_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_body(&bytes, "c", &sanitizer()) {
            prop_assert!(clear(&e));
        }
        let _ = parse_scan(&bytes, "c", 0).map_err(|e| assert!(clear(&e)));
        let _ = parse_documents(&bytes);
    }

    #[test]
    fn parsers_take_any_json(v in json_value()) {
        let s = sanitizer();
        let _ = parse_value(v.clone(), true, "c", &s);
        if let Err(e) = parse_value(v.clone(), false, "c", &s) {
            prop_assert!(clear(&e));
        }
        if let Some(export) = managed::detect(&v) {
            let u = managed::unwrap(export, v.clone());
            prop_assert!(u.events.iter().all(Value::is_object));
        }
        let _ = vulnerability_report(&v, "c", 0).map_err(|e| assert!(clear(&e)));
        let _ = parse_scan(v.to_string().as_bytes(), "c", 0);
        match object_change("c", ObjectOp::Upsert, v.clone(), None, &s, 0) {
            Ok(c) => prop_assert!(!c.name.is_empty() && !c.uid.is_empty()),
            Err(e) => prop_assert!(clear(&e)),
        }
        let _ = parse_documents(v.to_string().as_bytes());
    }

    #[test]
    fn the_fast_event_list_path_agrees_with_the_general_one(
        items in prop::collection::vec(prop_oneof![json_value(), Just(good_event())], 0..6),
    ) {
        let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}).to_string();
        let s = sanitizer();
        let fast = parse_body(body.as_bytes(), "c", &s).expect("an EventList");
        let general = parse_value(serde_json::from_str(&body).expect("json"), false, "c", &s).expect("an EventList");
        prop_assert_eq!(&fast.events, &general.events);
        let kinds = |b: &korvid_ingest::audit::ParsedBatch| b.rejected.iter().map(|(e, _)| e.kind()).collect::<Vec<_>>();
        prop_assert_eq!(kinds(&fast), kinds(&general));
    }

    #[test]
    fn mutated_real_documents_never_panic(
        which in 0usize..6,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut doc = samples().swap_remove(which);
        for (at, byte) in edits {
            let i = at.index(doc.len());
            doc[i] = byte;
        }
        doc.truncate(cut.index(doc.len() + 1).max(1));
        let s = sanitizer();
        let _ = parse_body(&doc, "c", &s);
        let _ = parse_scan(&doc, "c", 0);
        let _ = parse_documents(&doc);
        if let Ok(v) = serde_json::from_slice::<Value>(&doc) {
            let _ = parse_value(v, true, "c", &s);
        }
    }

    #[test]
    fn split_streams_read_like_whole_ones(
        docs in prop::collection::vec(json_value(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let docs: Vec<Value> = docs.into_iter().filter(|d| d.is_object() || d.is_array()).collect();
        let mut stream = Vec::new();
        let mut whole = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            // Alternate JSON lines and pretty-printed documents.
            let text = if i % 2 == 0 { d.to_string() } else { serde_json::to_string_pretty(d).unwrap_or_default() };
            whole.push(serde_json::from_str::<Value>(&text).expect("valid"));
            stream.extend_from_slice(text.as_bytes());
            stream.push(b'\n');
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut splitter = DocumentSplitter::default();
        let mut got = Vec::new();
        let mut from = 0;
        for to in points {
            let (pieces, _) = splitter.push(&stream[from..to], from as u64);
            for p in pieces {
                match p {
                    Piece::Document(v) => got.push(v),
                    Piece::Garbage(bytes, why) => prop_assert!(false, "garbage {why}: {:?}", String::from_utf8_lossy(&bytes)),
                }
            }
            from = to;
        }
        prop_assert_eq!(got, whole);
    }

    #[test]
    fn planted_secrets_never_survive(
        plant in "PLNT[A-Za-z0-9]{12,20}",
        key in "[a-z_]{1,10}",
        container in 0usize..3,
        depth in 0usize..3,
    ) {
        let s = sanitizer();
        let b64 = base64(&plant);
        let containers: Vec<Value> = (0..3).map(|i| {
            let v = if i == container { plant.clone() } else { format!("plain-{i}") };
            json!({"name": format!("c{i}"), "env": [{"name": key.to_uppercase(), "value": v}]})
        }).collect();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": format!("{{\"x\":\"{plant}\"}}")}},
            "spec": {"containers": containers}});
        for _ in 0..depth {
            pod = json!({"apiVersion": "v1", "kind": "List", "items": [pod]});
        }
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "s", "uid": "u2"}, "data": {key.clone(): b64}, "stringData": {key.clone(): plant}});
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m", "uid": "u3"},
            "data": {key.clone(): plant}});
        for obj in [secret.clone(), cm] {
            let c = object_change("c", ObjectOp::Upsert, obj, None, &s, 0).expect("object");
            let out = c.object_json.unwrap_or_default();
            prop_assert!(!out.contains(&plant) && !out.contains(&b64), "{}", out);
        }
        let out = s.sanitize_object(None, pod.clone()).to_string();
        prop_assert!(!out.contains(&plant), "{}", out);
        let audit = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [
            {"auditID": "a", "stage": "ResponseComplete", "verb": "create", "user": {"username": "u"},
             "objectRef": {"resource": "secrets", "namespace": "n", "name": "s"},
             "requestObject": secret, "responseObject": pod,
             "stageTimestamp": "2026-11-27T01:00:00Z"}]});
        let body = audit.to_string();
        let parsed = parse_body(body.as_bytes(), "c", &s).expect("parses");
        let text = format!("{:?}", parsed.events);
        prop_assert!(!text.contains(&plant) && !text.contains(&b64), "{}", text);
        // A cut-off copy is refused and dead-lettered: its sanitised text holds no plant either.
        let cut = &body.as_bytes()[..body.len() - 3];
        let clean = String::from_utf8_lossy(&s.sanitize_rejected_body(cut)).into_owned();
        prop_assert!(!clean.contains(&plant) && !clean.contains(&b64), "{}", clean);
    }
}

fn base64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn deep_nesting_is_refused_clearly_everywhere() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let e = parse_body(deep.as_bytes(), "c", &sanitizer()).expect_err("refused");
    assert!(e.to_string().contains("recursion limit"), "{e}");
    assert!(parse_scan(deep.as_bytes(), "c", 0).is_err());
    assert!(parse_documents(deep.as_bytes()).is_err());
    let yaml = format!(
        "a:\n{}",
        (1..400)
            .map(|i| format!("{}b{i}:\n", "  ".repeat(i)))
            .collect::<String>()
    );
    let docs = parse_documents(yaml.as_bytes()).expect("yaml read");
    assert!(docs.iter().all(Result::is_err), "too deep for an object");
}
