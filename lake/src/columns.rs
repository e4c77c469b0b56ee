//! The lake's tables as columns: findings and alerts flattened for SQL (enums as lower-case
//! strings, the subject as four columns, evidence as a JSON object, times as UTC timestamps).
//!
//! Files hold every column except `date` and `cluster`, which are the Hive partition directories
//! (`date=2026-11-27/cluster=prod`) and appear as the last two columns of each table.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use korvid_schemas::{Alert, AlertStatus, Detector, Evidence, Finding};

/// Partition columns, in directory order.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "cluster"];

/// A record type the lake stores as one table.
pub trait LakeRecord: Sized + Send + 'static {
    /// Table (and top-level directory) name.
    const TABLE: &'static str;
    /// Columns of the Parquet files (without the partition columns).
    fn file_schema() -> SchemaRef;
    /// Cluster partition.
    fn cluster(&self) -> &str;
    /// The time that picks the date partition, milliseconds.
    fn partition_time(&self) -> i64;
    /// Rows as one batch of [`LakeRecord::file_schema`].
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;
}

fn utc_millis() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn string_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// `tactic`, `severity`, `detector` and the subject, shared by both tables.
fn common_fields() -> Vec<Field> {
    vec![
        Field::new("title", DataType::Utf8, false),
        Field::new("tactic", DataType::Utf8, false),
        Field::new("techniques", string_list(), false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("subject_kind", DataType::Utf8, false),
        Field::new("subject_namespace", DataType::Utf8, true),
        Field::new("subject_name", DataType::Utf8, false),
        Field::new("subject_uid", DataType::Utf8, true),
        Field::new("detector", DataType::Utf8, false),
        Field::new("rule_id", DataType::Utf8, true),
        Field::new("model_version", DataType::Utf8, true),
        Field::new("score", DataType::Float64, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("implication", DataType::Utf8, false),
        Field::new("remediation", DataType::Utf8, false),
        Field::new("prevention", DataType::Utf8, false),
        Field::new("references", string_list(), false),
    ]
}

static FINDINGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("window_id", DataType::Utf8, false),
        Field::new("event_time", utc_millis(), false),
        Field::new("detected_at", utc_millis(), false),
    ];
    fields.extend(common_fields());
    Arc::new(Schema::new(fields))
});

static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("event_time", utc_millis(), false),
        Field::new("first_seen", utc_millis(), false),
        Field::new("last_seen", utc_millis(), false),
        Field::new("occurrences", DataType::Int64, false),
        Field::new("finding_ids", string_list(), false),
    ];
    fields.extend(common_fields());
    Arc::new(Schema::new(fields))
});

/// `rule`, `model` or `fused`.
pub fn detector_name(d: Detector) -> &'static str {
    match d {
        Detector::Rule => "rule",
        Detector::Model => "model",
        Detector::Fused => "fused",
    }
}

/// `firing` or `resolved`.
pub fn status_name(s: AlertStatus) -> &'static str {
    match s {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    }
}

/// Evidence as a JSON object `{name: value}`; a name given twice keeps every value, in order,
/// as an array.
pub fn evidence_json(evidence: &[Evidence]) -> String {
    let mut map = serde_json::Map::new();
    for e in evidence {
        let value = serde_json::Value::String(e.value.clone());
        match map.get_mut(&e.name) {
            None => {
                map.insert(e.name.clone(), value);
            }
            Some(serde_json::Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                map.insert(e.name.clone(), serde_json::Value::Array(vec![first, value]));
            }
        }
    }
    serde_json::Value::Object(map).to_string()
}

/// Builders for [`common_fields`], filled one row at a time.
#[derive(Default)]
struct CommonColumns {
    title: StringBuilder,
    tactic: StringBuilder,
    techniques: ListBuilder<StringBuilder>,
    severity: StringBuilder,
    subject_kind: StringBuilder,
    subject_namespace: StringBuilder,
    subject_name: StringBuilder,
    subject_uid: StringBuilder,
    detector: StringBuilder,
    rule_id: StringBuilder,
    model_version: StringBuilder,
    score: Float64Builder,
    evidence: StringBuilder,
    implication: StringBuilder,
    remediation: StringBuilder,
    prevention: StringBuilder,
    references: ListBuilder<StringBuilder>,
}

/// The fields [`CommonColumns`] needs from a finding or an alert.
struct CommonRow<'a> {
    title: &'a str,
    tactic: &'a str,
    techniques: &'a [String],
    severity: &'a str,
    subject: &'a korvid_schemas::Subject,
    detector: Detector,
    rule_id: Option<&'a str>,
    model_version: Option<&'a str>,
    score: f64,
    evidence: &'a [Evidence],
    implication: &'a str,
    remediation: &'a str,
    prevention: &'a str,
    references: &'a [String],
}

impl CommonColumns {
    fn push(&mut self, r: CommonRow<'_>) {
        self.title.append_value(r.title);
        self.tactic.append_value(r.tactic);
        for t in r.techniques {
            self.techniques.values().append_value(t);
        }
        self.techniques.append(true);
        self.severity.append_value(r.severity);
        self.subject_kind.append_value(&r.subject.kind);
        self.subject_namespace
            .append_option(r.subject.namespace.as_deref());
        self.subject_name.append_value(&r.subject.name);
        self.subject_uid.append_option(r.subject.uid.as_deref());
        self.detector.append_value(detector_name(r.detector));
        self.rule_id.append_option(r.rule_id);
        self.model_version.append_option(r.model_version);
        self.score.append_value(r.score);
        self.evidence.append_value(evidence_json(r.evidence));
        self.implication.append_value(r.implication);
        self.remediation.append_value(r.remediation);
        self.prevention.append_value(r.prevention);
        for t in r.references {
            self.references.values().append_value(t);
        }
        self.references.append(true);
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        // A list's item field must match the schema's `item` (nullable Utf8).
        let list = |b: &mut ListBuilder<StringBuilder>| -> ArrayRef { Arc::new(b.finish()) };
        vec![
            Arc::new(self.title.finish()),
            Arc::new(self.tactic.finish()),
            list(&mut self.techniques),
            Arc::new(self.severity.finish()),
            Arc::new(self.subject_kind.finish()),
            Arc::new(self.subject_namespace.finish()),
            Arc::new(self.subject_name.finish()),
            Arc::new(self.subject_uid.finish()),
            Arc::new(self.detector.finish()),
            Arc::new(self.rule_id.finish()),
            Arc::new(self.model_version.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.evidence.finish()),
            Arc::new(self.implication.finish()),
            Arc::new(self.remediation.finish()),
            Arc::new(self.prevention.finish()),
            list(&mut self.references),
        ]
    }
}

fn utc_builder(capacity: usize) -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

impl LakeRecord for Finding {
    const TABLE: &'static str = "findings";

    fn file_schema() -> SchemaRef {
        FINDINGS.clone()
    }

    fn cluster(&self) -> &str {
        &self.cluster
    }

    fn partition_time(&self) -> i64 {
        self.event_time
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let mut id = StringBuilder::new();
        let mut fingerprint = StringBuilder::new();
        let mut window_id = StringBuilder::new();
        let mut event_time = utc_builder(rows.len());
        let mut detected_at = utc_builder(rows.len());
        let mut common = CommonColumns::default();
        for f in rows {
            id.append_value(&f.id);
            fingerprint.append_value(&f.fingerprint);
            window_id.append_value(&f.window_id);
            event_time.append_value(f.event_time);
            detected_at.append_value(f.detected_at);
            common.push(CommonRow {
                title: &f.title,
                tactic: f.tactic.as_str(),
                techniques: &f.techniques,
                severity: f.severity.as_str(),
                subject: &f.subject,
                detector: f.detector,
                rule_id: f.rule_id.as_deref(),
                model_version: f.model_version.as_deref(),
                score: f.score,
                evidence: &f.evidence,
                implication: &f.implication,
                remediation: &f.remediation,
                prevention: &f.prevention,
                references: &f.references,
            });
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(fingerprint.finish()),
            Arc::new(window_id.finish()),
            Arc::new(event_time.finish()),
            Arc::new(detected_at.finish()),
        ];
        columns.extend(common.finish());
        RecordBatch::try_new(Self::file_schema(), columns)
    }
}

impl LakeRecord for Alert {
    const TABLE: &'static str = "alerts";

    fn file_schema() -> SchemaRef {
        ALERTS.clone()
    }

    fn cluster(&self) -> &str {
        &self.cluster
    }

    fn partition_time(&self) -> i64 {
        self.event_time
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let mut id = StringBuilder::new();
        let mut fingerprint = StringBuilder::new();
        let mut status = StringBuilder::new();
        let mut event_time = utc_builder(rows.len());
        let mut first_seen = utc_builder(rows.len());
        let mut last_seen = utc_builder(rows.len());
        let mut occurrences = Int64Builder::with_capacity(rows.len());
        let mut finding_ids = ListBuilder::new(StringBuilder::new());
        let mut common = CommonColumns::default();
        for a in rows {
            id.append_value(&a.id);
            fingerprint.append_value(&a.fingerprint);
            status.append_value(status_name(a.status));
            event_time.append_value(a.event_time);
            first_seen.append_value(a.first_seen);
            last_seen.append_value(a.last_seen);
            occurrences.append_value(a.occurrences);
            for f in &a.finding_ids {
                finding_ids.values().append_value(f);
            }
            finding_ids.append(true);
            common.push(CommonRow {
                title: &a.title,
                tactic: a.tactic.as_str(),
                techniques: &a.techniques,
                severity: a.severity.as_str(),
                subject: &a.subject,
                detector: a.detector,
                rule_id: a.rule_id.as_deref(),
                model_version: a.model_version.as_deref(),
                score: a.score,
                evidence: &a.evidence,
                implication: &a.implication,
                remediation: &a.remediation,
                prevention: &a.prevention,
                references: &a.references,
            });
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(fingerprint.finish()),
            Arc::new(status.finish()),
            Arc::new(event_time.finish()),
            Arc::new(first_seen.finish()),
            Arc::new(last_seen.finish()),
            Arc::new(occurrences.finish()),
            Arc::new(finding_ids.finish()),
        ];
        columns.extend(common.finish());
        RecordBatch::try_new(Self::file_schema(), columns)
    }
}

/// A table's full schema as SQL sees it: the file columns, then `date` and `cluster`.
pub fn table_schema(file_schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for name in PARTITION_COLUMNS {
        fields.push(Field::new(name, DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use korvid_schemas::{Severity, Subject, Tactic};

    pub(crate) fn finding(cluster: &str, event_time: i64, n: usize) -> Finding {
        Finding {
            cluster: cluster.into(),
            event_time,
            id: format!("f-{n}"),
            fingerprint: format!("fp-{n}"),
            window_id: "w-1".into(),
            detected_at: event_time + 5,
            detector: Detector::Rule,
            rule_id: Some("KOR-0001".into()),
            model_version: None,
            score: 0.9,
            title: "Command executed inside a running container".into(),
            tactic: Tactic::Execution,
            techniques: vec!["T1609".into()],
            severity: Severity::High,
            subject: Subject {
                kind: "Pod".into(),
                namespace: Some("shop".into()),
                name: "web-0".into(),
                uid: None,
            },
            evidence: vec![
                Evidence {
                    name: "actor".into(),
                    value: "mallory".into(),
                },
                Evidence {
                    name: "audit_id".into(),
                    value: "a1".into(),
                },
                Evidence {
                    name: "audit_id".into(),
                    value: "a2".into(),
                },
            ],
            implication: "i".into(),
            remediation: "r".into(),
            prevention: "p".into(),
            references: vec![],
        }
    }

    #[test]
    fn findings_flatten_to_their_schema() {
        let batch = Finding::to_batch(&[finding("prod", 1_000, 1), finding("prod", 2_000, 2)])
            .expect("batch");
        assert_eq!(batch.num_rows(), 2);
        let col = |name: &str| {
            arrow::util::display::array_value_to_string(
                batch.column_by_name(name).expect("column"),
                0,
            )
            .expect("display")
        };
        assert_eq!(col("tactic"), "execution");
        assert_eq!(col("severity"), "high");
        assert_eq!(col("detector"), "rule");
        assert_eq!(col("subject_namespace"), "shop");
        assert_eq!(col("techniques"), "[T1609]");
        assert_eq!(col("event_time"), "1970-01-01T00:00:01Z");
        assert_eq!(
            col("evidence"),
            r#"{"actor":"mallory","audit_id":["a1","a2"]}"#
        );
    }

    #[test]
    fn the_table_schema_ends_with_the_partitions() {
        let s = table_schema(&Finding::file_schema());
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["date", "cluster"]);
        assert!(Alert::file_schema().field_with_name("occurrences").is_ok());
    }
}
