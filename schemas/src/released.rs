//! Schemas of earlier releases, kept so readers can decode what older writers produced and so
//! the compatibility test can refuse a change that would break them.
//!
//! When a release changes a schema, copy the old `.avsc` into `avro/released/vN/` and add it here.

/// Every released version of a record's schema, oldest first.
pub fn released_versions(record: &str) -> Vec<&'static str> {
    RELEASED
        .iter()
        .filter(|(name, _, _)| *name == record)
        .map(|(_, _, avsc)| *avsc)
        .collect()
}

/// Every released schema as (record, release, avsc).
pub fn all_released() -> &'static [(&'static str, &'static str, &'static str)] {
    RELEASED
}

const RELEASED: &[(&str, &str, &str)] = &[
    (
        "ObjectChange",
        "v1",
        include_str!("../avro/released/v1/object_change.avsc"),
    ),
    (
        "AuditEvent",
        "v1",
        include_str!("../avro/released/v1/audit_event.avsc"),
    ),
    (
        "KubeEvent",
        "v1",
        include_str!("../avro/released/v1/kube_event.avsc"),
    ),
    (
        "ImageScan",
        "v1",
        include_str!("../avro/released/v1/image_scan.avsc"),
    ),
    (
        "GraphWindow",
        "v1",
        include_str!("../avro/released/v1/graph_window.avsc"),
    ),
    (
        "Finding",
        "v1",
        include_str!("../avro/released/v1/finding.avsc"),
    ),
    (
        "Alert",
        "v1",
        include_str!("../avro/released/v1/alert.avsc"),
    ),
    (
        "DeadLetter",
        "v1",
        include_str!("../avro/released/v1/dead_letter.avsc"),
    ),
    (
        "DedupState",
        "v1",
        include_str!("../avro/released/v1/dedup_state.avsc"),
    ),
];

/// Checks that `new` can replace `old`: readers using `new` can read data written with `old`
/// (backward) and readers still on `old` can read data written with `new` (forward).
pub fn check_compatibility(old: &str, new: &str) -> Result<(), String> {
    use apache_avro::Schema;
    use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
    let old = Schema::parse_str(old).map_err(|e| format!("old schema does not parse: {e}"))?;
    let new = Schema::parse_str(new).map_err(|e| format!("new schema does not parse: {e}"))?;
    // `Partial` means some values (e.g. a dropped enum symbol) cannot be read: not good enough.
    match SchemaCompatibility::can_read(&old, &new) {
        Ok(Compatibility::Full) => {}
        Ok(Compatibility::Partial) => {
            return Err("new readers cannot read some old values (missing enum symbols?)".into());
        }
        Err(e) => return Err(format!("new readers cannot read old data: {e}")),
    }
    match SchemaCompatibility::can_read(&new, &old) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("old readers cannot read some new values (new enum symbols?)".into())
        }
        Err(e) => Err(format!("old readers cannot read new data: {e}")),
    }
}
