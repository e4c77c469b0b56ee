//! Snapshot import: `kubectl get -A -o json` output, any `List`, or files and directories of
//! YAML/JSON manifests (multi-document, Helm-rendered output included) become ObjectChange
//! `SNAPSHOT` records. `korvid import` writes them to Kafka; `korvid scan` reads the same
//! documents offline.

use std::path::{Path, PathBuf};

use korvid_common::ServiceContext;
use korvid_common::kafka::{DeadLetterSource, KafkaClientError};
use korvid_schemas::{ObjectChange, ObjectOp};
use serde_json::Value;

use crate::objects::{object_change, object_key};
use crate::sanitize::Sanitizer;

/// Files larger than this are refused (a `kubectl get -A -o json` of a large cluster is tens of
/// MiB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Deepest nesting accepted in a document (real objects stay far below).
pub const MAX_DEPTH: usize = 64;

/// A document that could not be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// `file` or `file#N` (N counts documents from 1).
    pub origin: String,
    /// Stable error kind.
    pub kind: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// What a set of paths held.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// One record per object.
    pub changes: Vec<ObjectChange>,
    /// Documents that were not objects.
    pub refused: Vec<Refused>,
    /// Files read.
    pub files: usize,
}

/// Reads every path (files, or directories walked for `*.yaml`, `*.yml`, `*.json`).
pub fn read_paths(
    paths: &[PathBuf],
    cluster: &str,
    sanitizer: &Sanitizer,
    now_ms: i64,
) -> Snapshot {
    let mut out = Snapshot::default();
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files, &mut out.refused);
    }
    for file in files {
        out.files += 1;
        let origin = file.display().to_string();
        let docs = match read_documents(&file) {
            Ok(d) => d,
            Err(r) => {
                out.refused.push(r);
                continue;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let origin = format!("{origin}#{}", i + 1);
            let doc = match doc {
                Ok(d) => d,
                Err(reason) => {
                    out.refused.push(Refused {
                        origin,
                        kind: "invalid_document",
                        reason,
                    });
                    continue;
                }
            };
            for mut object in expand_lists(doc) {
                default_namespace(&mut object);
                match object_change(cluster, ObjectOp::Snapshot, object, None, sanitizer, now_ms) {
                    Ok(c) => out.changes.push(c),
                    Err(e) => out.refused.push(Refused {
                        origin: origin.clone(),
                        kind: e.kind(),
                        reason: e.to_string(),
                    }),
                }
            }
        }
    }
    out
}

/// Kinds that live outside namespaces (the built-in ones; CRDs are assumed namespaced).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "CertificateSigningRequest",
    "APIService",
    "CSIDriver",
    "CSINode",
    "VolumeAttachment",
    "ClusterIssuer",
];

/// A manifest without `metadata.namespace` lands in `default` when applied (kubectl's default
/// context); a dump from the API always has it. Cluster-scoped kinds are left alone.
pub fn default_namespace(object: &mut Value) {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() || CLUSTER_SCOPED.contains(&kind) {
        return;
    }
    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
        meta.entry("namespace")
            .or_insert_with(|| Value::String("default".into()));
    }
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, refused: &mut Vec<Refused>) {
    collect_files_with(path, &["yaml", "yml", "json"], files, refused);
}

fn collect_files_with(
    path: &Path,
    extensions: &[&str],
    files: &mut Vec<PathBuf>,
    refused: &mut Vec<Refused>,
) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(e) => e.filter_map(Result::ok).map(|e| e.path()).collect(),
                Err(e) => {
                    refused.push(io_refusal(path, &e));
                    return;
                }
            };
            entries.sort();
            for p in entries {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.as_deref().is_some_and(|n| n.starts_with('.')) {
                    continue;
                }
                if p.is_dir() {
                    collect_files_with(&p, extensions, files, refused);
                } else if p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| extensions.contains(&e))
                {
                    files.push(p);
                }
            }
        }
        Ok(_) => files.push(path.to_path_buf()),
        Err(e) => refused.push(io_refusal(path, &e)),
    }
}

fn io_refusal(path: &Path, e: &std::io::Error) -> Refused {
    Refused {
        origin: path.display().to_string(),
        kind: "unreadable",
        reason: e.to_string(),
    }
}

/// The documents of one file: one JSON value, or each YAML document.
fn read_documents(file: &Path) -> Result<Vec<Result<Value, String>>, Refused> {
    let origin = file.display().to_string();
    let len = std::fs::metadata(file)
        .map_err(|e| io_refusal(file, &e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(Refused {
            origin,
            kind: "too_large",
            reason: format!("{len} bytes, over the {MAX_FILE_BYTES}-byte limit"),
        });
    }
    let bytes = std::fs::read(file).map_err(|e| io_refusal(file, &e))?;
    parse_documents(&bytes).map_err(|reason| Refused {
        origin,
        kind: "invalid_document",
        reason,
    })
}

/// Splits text into documents: JSON when it starts like JSON, else multi-document YAML.
/// Empty YAML documents are skipped; documents nested deeper than [`MAX_DEPTH`] are refused.
pub fn parse_documents(bytes: &[u8]) -> Result<Vec<Result<Value, String>>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(trimmed).map_err(|e| format!("invalid JSON: {e}"))?;
        let docs = match v {
            Value::Array(items) => items,
            one => vec![one],
        };
        return Ok(docs.into_iter().map(check_depth).collect());
    }
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(trimmed) {
        let parsed = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| format!("invalid YAML: {e}"))
            .and_then(|y| {
                serde_json::to_value(y).map_err(|e| format!("YAML not representable as JSON: {e}"))
            });
        match parsed {
            Ok(Value::Null) => {}
            Ok(v) => docs.push(check_depth(v)),
            Err(e) => {
                // The YAML reader cannot resync after a syntax error (it would repeat the
                // error forever), so the rest of the file is refused with it.
                docs.push(Err(e));
                break;
            }
        }
    }
    Ok(docs)
}

fn check_depth(v: Value) -> Result<Value, String> {
    fn depth(v: &Value, at: usize) -> usize {
        if at > MAX_DEPTH {
            return at;
        }
        match v {
            Value::Array(a) => a.iter().map(|x| depth(x, at + 1)).max().unwrap_or(at),
            Value::Object(m) => m.values().map(|x| depth(x, at + 1)).max().unwrap_or(at),
            _ => at,
        }
    }
    if depth(&v, 0) > MAX_DEPTH {
        Err(format!("nested deeper than {MAX_DEPTH} levels"))
    } else {
        Ok(v)
    }
}

/// The Kubernetes objects in one document: Lists expanded, namespace-less namespaced objects
/// put in `default` (as `kubectl apply` would).
pub fn objects_in(doc: Value) -> Vec<Value> {
    let mut objects = expand_lists(doc);
    for o in &mut objects {
        default_namespace(o);
    }
    objects
}

/// Every file below `paths` (directories walked, hidden entries skipped), and the paths that
/// could not be read.
pub fn files_below(paths: &[PathBuf], extensions: &[&str]) -> (Vec<PathBuf>, Vec<Refused>) {
    let mut files = Vec::new();
    let mut refused = Vec::new();
    for p in paths {
        collect_files_with(p, extensions, &mut files, &mut refused);
    }
    (files, refused)
}

/// `List`s (and `*List` kinds such as `PodList`) become their items; anything else is itself.
fn expand_lists(doc: Value) -> Vec<Value> {
    let is_list = doc
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && doc.get("items").is_some_and(Value::is_array);
    if !is_list {
        return vec![doc];
    }
    // `PodList` items carry no kind of their own; `v1 List` items (kubectl get -A) do.
    let item_kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .and_then(|k| k.strip_suffix("List"))
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    let api_version = doc.get("apiVersion").cloned();
    let Value::Object(mut map) = doc else {
        return Vec::new();
    };
    let Some(Value::Array(items)) = map.remove("items") else {
        return Vec::new();
    };
    items
        .into_iter()
        .flat_map(|mut item| {
            if let (Some(k), Some(obj)) = (&item_kind, item.as_object_mut()) {
                obj.entry("kind")
                    .or_insert_with(|| Value::String(k.clone()));
                if let Some(v) = &api_version {
                    obj.entry("apiVersion").or_insert_with(|| v.clone());
                }
            }
            expand_lists(item)
        })
        .collect()
}

/// What `korvid import` did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Files read.
    pub files: usize,
    /// Objects written.
    pub objects: usize,
    /// Documents refused (each dead-lettered).
    pub refused: Vec<Refused>,
}

/// Reads `paths` and writes every object to the objects topic; refused documents go to the
/// dead-letter topic (named, not their content: a refused manifest may hold secrets).
pub async fn import(
    paths: &[PathBuf],
    cluster: &str,
    sanitizer: &Sanitizer,
    ctx: &ServiceContext,
) -> Result<ImportReport, KafkaClientError> {
    let snapshot = read_paths(paths, cluster, sanitizer, korvid_common::now_millis());
    let producer = ctx.kafka.producer()?;
    let dead_letters = ctx.kafka.dead_letters(producer.clone());
    let topic = &ctx.kafka.topics.objects;
    let mut pending = Vec::with_capacity(snapshot.changes.len());
    for c in &snapshot.changes {
        pending.push(
            producer
                .enqueue(topic, &object_key(cluster, &c.uid), c)
                .await?,
        );
    }
    for p in pending {
        p.acknowledged().await?;
    }
    for r in &snapshot.refused {
        let source = DeadLetterSource {
            cluster: Some(cluster.to_string()),
            ..Default::default()
        };
        dead_letters
            .send(
                "ingest.import",
                r.kind,
                &format!("{}: {}", r.origin, r.reason),
                b"",
                source,
            )
            .await?;
    }
    Ok(ImportReport {
        files: snapshot.files,
        objects: snapshot.changes.len(),
        refused: snapshot.refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitizer() -> Sanitizer {
        Sanitizer::new(b"0123456789abcdef")
    }

    #[test]
    fn kubectl_get_all_json_expands_its_items() {
        let dump = br#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"x","uid":"1"}},
            {"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","namespace":"x","uid":"2"}}]}"#;
        let docs = parse_documents(dump).expect("docs");
        let objects: Vec<Value> = docs
            .into_iter()
            .flat_map(|d| expand_lists(d.expect("doc")))
            .collect();
        assert_eq!(objects.len(), 2);
        let typed = br#"{"apiVersion":"v1","kind":"PodList","metadata":{},"items":[{"metadata":{"name":"a","uid":"1"}}]}"#;
        let items = expand_lists(
            parse_documents(typed)
                .expect("docs")
                .remove(0)
                .expect("doc"),
        );
        assert_eq!(items[0]["kind"], "Pod");
        assert_eq!(items[0]["apiVersion"], "v1");
    }

    #[test]
    fn multi_document_yaml_with_helm_comments() {
        let yaml = b"---\n# Source: chart/templates/sa.yaml\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n  namespace: shop\n---\n---\n# Source: chart/templates/secret.yaml\napiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2\n";
        let docs = parse_documents(yaml).expect("docs");
        assert_eq!(docs.len(), 2, "empty documents are skipped");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("all.yaml"), yaml).expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"not a manifest").expect("write");
        let snap = read_paths(&[dir.path().to_path_buf()], "c", &sanitizer(), 1);
        assert_eq!(
            (snap.files, snap.changes.len(), snap.refused.len()),
            (1, 2, 0)
        );
        let secret = snap
            .changes
            .iter()
            .find(|c| c.kind == "Secret")
            .expect("secret");
        assert!(
            !secret
                .object_json
                .as_deref()
                .unwrap_or("")
                .contains("hunter2")
        );
        assert_eq!(secret.op, ObjectOp::Snapshot);
    }

    #[test]
    fn bad_documents_are_refused_with_their_origin_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("mixed.yaml"),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\n- just\n- a list\n---\nkey: [unclosed\n",
        )
        .expect("write");
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        std::fs::write(dir.path().join("deep.json"), deep).expect("write");
        let snap = read_paths(&[dir.path().to_path_buf()], "c", &sanitizer(), 1);
        assert_eq!(snap.changes.len(), 1, "{:?}", snap.refused);
        assert_eq!(snap.refused.len(), 3, "{:?}", snap.refused);
        assert!(snap.refused.iter().any(|r| r.origin.ends_with("deep.json")));
        assert!(
            snap.refused
                .iter()
                .any(|r| r.origin.ends_with("mixed.yaml#2"))
        );
    }
}
