//! Objects from the Kubernetes API watch: read as kube's `DynamicObject` (as the watcher
//! receives them), turned back into JSON, then routed as `kube_watch` routes them: every kind
//! to `objects::object_change` (with the watched kind as the type hint), Events to
//! `objects::kube_event`, VulnerabilityReports to `scans::vulnerability_report`.
#![no_main]

use korvid_fuzz::{CLUSTER, check_image_scan, check_kube_event, check_object_change, sanitizer};
use korvid_ingest::objects::{kube_event, object_change};
use korvid_ingest::scans::vulnerability_report;
use korvid_schemas::ObjectOp;
use kube::core::DynamicObject;
use libfuzzer_sys::fuzz_target;

/// The watched kinds the type hint is drawn from (apiVersion, kind).
const HINTS: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("apps/v1", "Deployment"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(object) = serde_json::from_slice::<DynamicObject>(data) else {
        return;
    };
    let Ok(value) = serde_json::to_value(&object) else {
        return;
    };
    let hint = HINTS[data.len() % HINTS.len()];
    let op = [ObjectOp::Snapshot, ObjectOp::Upsert, ObjectOp::Delete][data.len() % 3];
    match object_change(CLUSTER, op, value.clone(), Some(hint), sanitizer(), 1) {
        Ok(change) => {
            assert_eq!(change.op, op);
            check_object_change(&change);
        }
        Err(e) => {
            let _ = (e.kind(), e.to_string());
        }
    }
    match kube_event(CLUSTER, &value, 1) {
        Ok(ev) => check_kube_event(&ev),
        Err(e) => {
            let _ = (e.kind(), e.to_string());
        }
    }
    match vulnerability_report(&value, CLUSTER, 1) {
        Ok(scan) => check_image_scan(&scan, false),
        Err(e) => {
            let _ = (e.kind(), e.to_string());
        }
    }
});
