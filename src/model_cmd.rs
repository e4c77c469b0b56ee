//! `korvid model featurize`: training tables for the graph model, from `korvid simulate`
//! output, built by the offline pipeline (scan's readers, enrich's windows, the rule engine) and
//! detect's own feature code, so what the model learns from is what it will see online.
//!
//! Writes, into `--out`: `nodes.parquet` (one row per entity per window: features by name, the
//! ground truth), `edges.parquet` (typed edges by row index), `findings.parquet` (every rule
//! hit, the rules-alone baseline), `windows.parquet` and `features.json` (the layout).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use korvid_detect::RuleEngine;
use korvid_detect::model::features::{self, RELATIONS, WindowGraph, subject_id};
use korvid_schemas::{GraphWindow, Tactic, WindowKind};
use korvid_simulate::Label;
use parquet::arrow::ArrowWriter;
use serde_json::json;

use crate::settings::KorvidSettings;

/// `korvid model ...`
#[derive(clap::Subcommand)]
pub enum ModelAction {
    /// Write training tables (Parquet) from `korvid simulate` directories.
    Featurize {
        /// Where to write the tables (created; existing tables are replaced).
        #[arg(long)]
        out: PathBuf,
        /// Directories written by `korvid simulate`.
        #[arg(required = true)]
        simulations: Vec<PathBuf>,
    },
}

/// Runs a `korvid model` command.
pub async fn run(action: ModelAction, settings: &KorvidSettings) -> anyhow::Result<()> {
    match action {
        ModelAction::Featurize { out, simulations } => {
            featurize(&out, &simulations, settings).await
        }
    }
}

/// Columns of one table, appended to per window.
#[derive(Default)]
struct Tables {
    nodes: Vec<RecordBatch>,
    edges: Vec<RecordBatch>,
    findings: Vec<RecordBatch>,
    windows: Vec<RecordBatch>,
}

async fn featurize(
    out: &Path,
    simulations: &[PathBuf],
    settings: &KorvidSettings,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let catalog = crate::rules_cmd::catalog(settings);
    let engine = RuleEngine::new(catalog)
        .await
        .context("planning the rules")?;
    let mut tables = Tables::default();
    let mut totals = (0usize, 0usize, 0usize);
    for dir in simulations {
        let sim = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        let labels = read_labels(&dir.join("labels.jsonl"))?;
        let paths = [
            dir.join("cluster.json"),
            dir.join("audit.log"),
            dir.join("scans"),
        ];
        let Some(mut inputs) = crate::scan::read_inputs(&paths, settings)? else {
            anyhow::bail!(
                "{} is not a complete `korvid simulate` output",
                dir.display()
            );
        };
        let windows = inputs.windows(settings).await?;
        for w in &windows.windows {
            let eval = engine.evaluate(w, w.window_end).await?;
            let graph = features::window_graph(&eval.tables, &eval.findings);
            let truth = truth(w, &graph, &labels, settings.enrich.window_ms);
            totals.0 += 1;
            totals.1 += graph.node_count();
            totals.2 += truth.malicious.iter().filter(|m| **m).count();
            tables.push(&sim, w, &graph, &truth, &eval.findings)?;
        }
        eprintln!(
            "korvid model featurize: {sim}: {} windows",
            windows.windows.len()
        );
    }
    write(out, "nodes.parquet", &tables.nodes)?;
    write(out, "edges.parquet", &tables.edges)?;
    write(out, "findings.parquet", &tables.findings)?;
    write(out, "windows.parquet", &tables.windows)?;
    let layout = json!({
        "feature_version": features::FEATURE_VERSION,
        "features": features::feature_names(),
        "relations": RELATIONS.iter().copied().chain(["other"]).collect::<Vec<_>>(),
        "tactics": Tactic::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("features.json"),
        serde_json::to_vec_pretty(&layout)?,
    )?;
    eprintln!(
        "korvid model featurize: {} windows, {} node rows ({} labelled malicious) -> {}",
        totals.0,
        totals.1,
        totals.2,
        out.display()
    );
    Ok(())
}

fn read_labels(path: &Path) -> anyhow::Result<Vec<Label>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Ground truth of one window's entities.
struct Truth {
    malicious: Vec<bool>,
    /// Per entity, the tactics of the attack steps it took part in.
    tactics: Vec<BTreeSet<usize>>,
    techniques: Vec<BTreeSet<String>>,
    campaigns: Vec<BTreeSet<String>>,
    /// Part of a labelled benign action that looks like an attack.
    lookalike: Vec<bool>,
}

/// The `nodes.id` of a label's actor (a username).
fn actor_id(actor: &str) -> String {
    korvid_schemas::window_tables::subject_node_id(actor)
}

/// Labels the window's entities. An attack step's actor is malicious in the windows its step
/// overlaps; what it acted on or created, in those and the following window, and in every
/// later full (state) window, where what an attacker left behind is still an attack.
fn truth(w: &GraphWindow, g: &WindowGraph, labels: &[Label], window_ms: i64) -> Truth {
    let n = g.node_count();
    let mut t = Truth {
        malicious: vec![false; n],
        tactics: vec![BTreeSet::new(); n],
        techniques: vec![BTreeSet::new(); n],
        campaigns: vec![BTreeSet::new(); n],
        lookalike: vec![false; n],
    };
    let index: HashMap<&str, usize> = g
        .node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let full = w.kind == WindowKind::Full;
    for l in labels {
        let overlaps = |slack: i64| w.window_start <= l.end_ms + slack && w.window_end > l.start_ms;
        let actor = l.actor.as_deref().map(actor_id);
        let mut hit = Vec::new();
        if overlaps(0)
            && let Some(a) = actor.as_deref().and_then(|a| index.get(a))
        {
            hit.push(*a);
        }
        if overlaps(window_ms) || (full && w.window_end > l.start_ms) {
            hit.extend(
                l.entities
                    .iter()
                    .filter(|e| Some(e.as_str()) != actor.as_deref())
                    .filter_map(|e| index.get(e.as_str())),
            );
        }
        for i in hit {
            if !l.malicious {
                t.lookalike[i] = true;
                continue;
            }
            t.malicious[i] = true;
            if let Some(tactic) = l.tactic.as_deref().and_then(Tactic::parse) {
                t.tactics[i].insert(features::tactic_index(tactic));
            }
            t.techniques[i].insert(l.technique.clone());
            if let Some(c) = &l.campaign {
                t.campaigns[i].insert(c.clone());
            }
        }
    }
    t
}

fn strings(v: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(v.into_iter().map(Some).collect::<StringArray>())
}

fn joined(v: &[BTreeSet<String>]) -> ArrayRef {
    strings(
        v.iter()
            .map(|s| s.iter().cloned().collect::<Vec<_>>().join(",")),
    )
}

fn schema(fields: Vec<(&str, DataType)>) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, false))
            .collect::<Vec<_>>(),
    ))
}

impl Tables {
    fn push(
        &mut self,
        sim: &str,
        w: &GraphWindow,
        g: &WindowGraph,
        truth: &Truth,
        findings: &[korvid_schemas::Finding],
    ) -> anyhow::Result<()> {
        let n = g.node_count();
        let same = |v: &str, k: usize| strings(std::iter::repeat_n(v.to_string(), k));
        let kind = match w.kind {
            WindowKind::Full => "full",
            WindowKind::Incremental => "incremental",
        };
        let names = features::feature_names();
        let width = names.len();
        let mut fields = vec![
            ("sim", DataType::Utf8),
            ("window_id", DataType::Utf8),
            ("node", DataType::Int32),
            ("node_id", DataType::Utf8),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            same(sim, n),
            same(&w.window_id, n),
            Arc::new(Int32Array::from_iter_values(0..n as i32)),
            strings(g.node_ids.iter().cloned()),
        ];
        for (j, name) in names.iter().enumerate() {
            fields.push((name.as_str(), DataType::Float32));
            columns.push(Arc::new(Float32Array::from_iter_values(
                (0..n).map(|i| g.features[i * width + j]),
            )));
        }
        fields.push(("malicious", DataType::Boolean));
        columns.push(Arc::new(BooleanArray::from(truth.malicious.clone())));
        let label_names: Vec<String> = Tactic::ALL
            .iter()
            .map(|t| format!("label_{}", t.as_str()))
            .collect();
        for (k, name) in label_names.iter().enumerate() {
            fields.push((name.as_str(), DataType::Boolean));
            columns.push(Arc::new(BooleanArray::from(
                truth
                    .tactics
                    .iter()
                    .map(|s| s.contains(&k))
                    .collect::<Vec<_>>(),
            )));
        }
        fields.push(("techniques", DataType::Utf8));
        columns.push(joined(&truth.techniques));
        fields.push(("campaigns", DataType::Utf8));
        columns.push(joined(&truth.campaigns));
        fields.push(("lookalike", DataType::Boolean));
        columns.push(Arc::new(BooleanArray::from(truth.lookalike.clone())));
        self.nodes
            .push(RecordBatch::try_new(schema(fields), columns)?);

        let e = g.edge_src.len();
        self.edges.push(RecordBatch::try_new(
            schema(vec![
                ("sim", DataType::Utf8),
                ("window_id", DataType::Utf8),
                ("src", DataType::Int32),
                ("dst", DataType::Int32),
                ("relation", DataType::Int32),
            ]),
            vec![
                same(sim, e),
                same(&w.window_id, e),
                Arc::new(Int32Array::from_iter_values(
                    g.edge_src.iter().map(|v| *v as i32),
                )),
                Arc::new(Int32Array::from_iter_values(
                    g.edge_dst.iter().map(|v| *v as i32),
                )),
                Arc::new(Int32Array::from_iter_values(
                    g.edge_type.iter().map(|v| *v as i32),
                )),
            ],
        )?);

        let index: BTreeMap<&str, i32> = g
            .node_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as i32))
            .collect();
        let f = findings.len();
        self.findings.push(RecordBatch::try_new(
            schema(vec![
                ("sim", DataType::Utf8),
                ("window_id", DataType::Utf8),
                ("node", DataType::Int32),
                ("subject_id", DataType::Utf8),
                ("rule_id", DataType::Utf8),
                ("tactic", DataType::Utf8),
                ("severity", DataType::Utf8),
            ]),
            vec![
                same(sim, f),
                same(&w.window_id, f),
                Arc::new(Int32Array::from_iter_values(findings.iter().map(|x| {
                    index.get(subject_id(x).as_str()).copied().unwrap_or(-1)
                }))),
                strings(findings.iter().map(subject_id)),
                strings(
                    findings
                        .iter()
                        .map(|x| x.rule_id.clone().unwrap_or_default()),
                ),
                strings(findings.iter().map(|x| x.tactic.as_str().to_string())),
                strings(findings.iter().map(|x| x.severity.as_str().to_string())),
            ],
        )?);

        self.windows.push(RecordBatch::try_new(
            schema(vec![
                ("sim", DataType::Utf8),
                ("window_id", DataType::Utf8),
                ("kind", DataType::Utf8),
                ("partition_key", DataType::Utf8),
                ("window_start", DataType::Int64),
                ("window_end", DataType::Int64),
                ("nodes", DataType::Int64),
                ("edges", DataType::Int64),
                ("events", DataType::Int64),
            ]),
            vec![
                same(sim, 1),
                same(&w.window_id, 1),
                same(kind, 1),
                same(&w.partition_key, 1),
                Arc::new(Int64Array::from(vec![w.window_start])),
                Arc::new(Int64Array::from(vec![w.window_end])),
                Arc::new(Int64Array::from(vec![n as i64])),
                Arc::new(Int64Array::from(vec![e as i64])),
                Arc::new(Int64Array::from(vec![w.event_count])),
            ],
        )?);
        Ok(())
    }
}

/// Writes batches of one schema as a Parquet file (Snappy-compressed).
fn write(dir: &Path, name: &str, batches: &[RecordBatch]) -> anyhow::Result<()> {
    let path = dir.join(name);
    let Some(first) = batches.first() else {
        anyhow::bail!("nothing to write to {}: no windows", path.display());
    };
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, first.schema(), Some(props))?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(())
}
