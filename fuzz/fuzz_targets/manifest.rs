//! Manifest files for `korvid import` and `korvid scan`: YAML (multi-document, Helm output) or
//! JSON (`kubectl get -A -o json`, Lists), through `snapshot::parse_documents`, then
//! `snapshot::objects_in` and `objects::object_change`, as `snapshot::read_paths` and the
//! scan reader do.
#![no_main]

use korvid_fuzz::{CLUSTER, check_object_change, sanitizer};
use korvid_ingest::objects::object_change;
use korvid_ingest::snapshot::{MAX_DEPTH, objects_in, parse_documents};
use korvid_schemas::ObjectOp;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Nesting as `snapshot` counts it: the number of containers above the deepest value.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(|x| 1 + depth(x)).max().unwrap_or(0),
        Value::Object(m) => m.values().map(|x| 1 + depth(x)).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(docs) = parse_documents(data) else {
        return;
    };
    for doc in docs.into_iter().flatten() {
        assert!(
            depth(&doc) <= MAX_DEPTH,
            "a document deeper than {MAX_DEPTH} got through"
        );
        for object in objects_in(doc) {
            match object_change(CLUSTER, ObjectOp::Snapshot, object, None, sanitizer(), 1) {
                Ok(change) => check_object_change(&change),
                Err(e) => {
                    let _ = (e.kind(), e.to_string());
                }
            }
        }
    }
});
