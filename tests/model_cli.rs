//! `korvid model featurize`: training tables from simulated clusters, built with detect's own
//! feature code, with ground truth attached and rule hits among the features.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int32Type};
use korvid_detect::model::features::{feature_count, feature_names};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn korvid(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_korvid"))
        .args(args)
        .env("KORVID__TELEMETRY__LISTEN", "")
        .output()
        .expect("run korvid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).expect("table written");
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("batches")
}

#[test]
fn featurize_writes_labelled_tables_with_rule_hits_as_features() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = dir.path().join("sim-3");
    let out = dir.path().join("tables");
    let (code, err) = korvid(&[
        "simulate",
        "--seed",
        "3",
        "--duration",
        "600",
        "--campaigns",
        "2",
        "--out",
        sim.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = korvid(&[
        "model",
        "featurize",
        "--out",
        out.to_str().expect("utf-8"),
        sim.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("labelled malicious"), "{err}");

    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("features.json")).expect("layout"))
            .expect("json");
    let names: Vec<String> = serde_json::from_value(layout["features"].clone()).expect("names");
    assert_eq!(names, feature_names(), "the layout is detect's own");

    let nodes = read(&out.join("nodes.parquet"));
    let schema = nodes[0].schema();
    for n in &names {
        assert!(schema.field_with_name(n).is_ok(), "feature column {n}");
    }
    let rows: usize = nodes.iter().map(RecordBatch::num_rows).sum();
    let malicious: usize = nodes
        .iter()
        .map(|b| {
            b.column_by_name("malicious")
                .expect("label")
                .as_boolean()
                .true_count()
        })
        .sum();
    assert!(malicious > 0 && malicious < rows, "{malicious} of {rows}");

    // Every rule finding on an entity of its window shows in that entity's rule features.
    let mut rule_feature: HashMap<(String, i32, String), f32> = HashMap::new();
    for b in &nodes {
        let windows = b
            .column_by_name("window_id")
            .expect("window")
            .as_string::<i32>();
        let node = b
            .column_by_name("node")
            .expect("node")
            .as_primitive::<Int32Type>();
        for tactic in korvid_schemas::Tactic::ALL {
            let col = b
                .column_by_name(&format!("rule_{}", tactic.as_str()))
                .expect("rule feature")
                .as_primitive::<Float32Type>();
            for r in 0..b.num_rows() {
                rule_feature.insert(
                    (
                        windows.value(r).to_string(),
                        node.value(r),
                        tactic.as_str().into(),
                    ),
                    col.value(r),
                );
            }
        }
    }
    let findings = read(&out.join("findings.parquet"));
    let mut checked = 0;
    for b in &findings {
        let windows = b
            .column_by_name("window_id")
            .expect("window")
            .as_string::<i32>();
        let node = b
            .column_by_name("node")
            .expect("node")
            .as_primitive::<Int32Type>();
        let tactic = b
            .column_by_name("tactic")
            .expect("tactic")
            .as_string::<i32>();
        for r in 0..b.num_rows() {
            if node.value(r) < 0 {
                continue;
            }
            let key = (
                windows.value(r).to_string(),
                node.value(r),
                tactic.value(r).to_string(),
            );
            assert!(rule_feature[&key] > 0.0, "rule hit {key:?} is a feature");
            checked += 1;
        }
    }
    assert!(checked > 0, "the simulation raised rule findings");

    // Edges point at rows of their own window.
    let windows = read(&out.join("windows.parquet"));
    let sizes: HashMap<String, i64> = windows
        .iter()
        .flat_map(|b| {
            let id = b
                .column_by_name("window_id")
                .expect("id")
                .as_string::<i32>();
            let n = b
                .column_by_name("nodes")
                .expect("nodes")
                .as_primitive::<arrow::datatypes::Int64Type>();
            (0..b.num_rows())
                .map(|r| (id.value(r).to_string(), n.value(r)))
                .collect::<Vec<_>>()
        })
        .collect();
    for b in read(&out.join("edges.parquet")) {
        let id = b
            .column_by_name("window_id")
            .expect("id")
            .as_string::<i32>();
        for col in ["src", "dst"] {
            let c = b
                .column_by_name(col)
                .expect("end")
                .as_primitive::<Int32Type>();
            for r in 0..b.num_rows() {
                assert!(i64::from(c.value(r)) < sizes[id.value(r)]);
            }
        }
        let rel = b
            .column_by_name("relation")
            .expect("relation")
            .as_primitive::<Int32Type>();
        assert!(rel.null_count() == 0);
    }
    assert_eq!(feature_count(), names.len());
}

#[test]
fn featurize_names_a_directory_that_is_not_a_simulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = korvid(&[
        "model",
        "featurize",
        "--out",
        dir.path().join("t").to_str().expect("utf-8"),
        dir.path().to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("labels.jsonl"), "{err}");
}
