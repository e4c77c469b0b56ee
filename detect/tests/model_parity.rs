//! The built-in model under ONNX Runtime gives what PyTorch gave for the same inputs
//! (`detect/model/parity.json`, written by `detect/model/train.py` at export), to 1e-4; and a
//! batch (disjoint union) scores each graph as it is scored alone. Needs the ONNX Runtime
//! library `make setup` installs; without it the test fails and says so.

use std::path::PathBuf;

use korvid_detect::model::runtime::BUILTIN_MODEL;
use korvid_detect::model::{Model, RuntimeOptions, WindowGraph};
use serde_json::Value;

fn fixture() -> Value {
    let path = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("model/parity.json");
    let text = std::fs::read_to_string(&path).expect("parity.json is committed with the model");
    serde_json::from_str(&text).expect("parity.json is JSON")
}

fn numbers<T: From<f32>>(v: &Value) -> Vec<T> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| T::from(x.as_f64().expect("a number") as f32))
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_i64().expect("an integer"))
        .collect()
}

fn graph(case: &Value) -> WindowGraph {
    let n = case["nodes"].as_u64().expect("nodes") as usize;
    WindowGraph {
        node_ids: (0..n).map(|i| format!("Pod/test/{i}")).collect(),
        features: numbers(&case["x"]),
        edge_src: ints(&case["edge_src"]),
        edge_dst: ints(&case["edge_dst"]),
        edge_type: ints(&case["edge_type"]),
    }
}

fn load() -> Model {
    Model::load(BUILTIN_MODEL, &RuntimeOptions::default())
        .unwrap_or_else(|e| panic!("{e} (the model tests need ONNX Runtime: `make setup`)"))
}

#[test]
fn onnx_runtime_matches_pytorch_on_the_stored_inputs() {
    let fx = fixture();
    let tolerance = fx["tolerance"].as_f64().expect("tolerance") as f32;
    let cases = fx["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "the fixture holds cases");
    let mut model = load();
    for (k, case) in cases.iter().enumerate() {
        let g = graph(case);
        assert_eq!(
            g.features.len(),
            g.node_count() * korvid_detect::model::features::feature_count(),
            "case {k}: the fixture was written for this feature layout"
        );
        let scores = model.run(&[&g]).expect("inference");
        let want_risk: Vec<f32> = numbers(&case["risk"]);
        let want_tactics: Vec<f32> = numbers(&case["tactics"]);
        assert_eq!(scores[0].risk.len(), want_risk.len());
        assert_eq!(scores[0].tactics.len(), want_tactics.len());
        for (i, (got, want)) in scores[0]
            .risk
            .iter()
            .chain(&scores[0].tactics)
            .zip(want_risk.iter().chain(&want_tactics))
            .enumerate()
        {
            assert!(
                (got - want).abs() <= tolerance,
                "case {k}, output {i}: ort {got} vs PyTorch {want}"
            );
        }
    }
}

#[test]
fn a_batch_scores_each_graph_as_it_is_scored_alone() {
    let fx = fixture();
    let graphs: Vec<WindowGraph> = fx["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(graph)
        .collect();
    let mut model = load();
    let alone: Vec<_> = graphs
        .iter()
        .map(|g| model.run(&[g]).expect("inference").remove(0))
        .collect();
    let refs: Vec<&WindowGraph> = graphs.iter().collect();
    let together = model.run(&refs).expect("batched inference");
    assert_eq!(together.len(), alone.len());
    for (k, (a, b)) in alone.iter().zip(&together).enumerate() {
        for (x, y) in a
            .risk
            .iter()
            .chain(&a.tactics)
            .zip(b.risk.iter().chain(&b.tactics))
        {
            assert!(
                (x - y).abs() <= 1e-5,
                "graph {k}: alone {x}, in a batch {y}"
            );
        }
    }
    // An empty window is answered without running the model.
    let empty = model.run(&[&WindowGraph::default()]).expect("empty");
    assert!(empty[0].risk.is_empty());
}

#[test]
fn a_broken_model_file_is_refused_with_a_clear_error() {
    // Any bytes that are not this model: a truncated copy does not even parse.
    let err = Model::load(
        &BUILTIN_MODEL[..BUILTIN_MODEL.len() / 2],
        &RuntimeOptions::default(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().starts_with("model:"), "{err}");
}
