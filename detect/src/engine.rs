//! Evaluates the catalog over a graph window. Queries are parsed and planned once, when the
//! engine is built; each window only swaps the tables' contents and executes.
//!
//! Rules over object state alone (their plans read neither `activity` nor `kube_events`) judge
//! the whole inventory in full windows; in an incremental window they report only subjects the
//! window is about (`nodes.in_focus`: touched by its activity or changed since the namespace's
//! previous window), so an unchanged misconfiguration is not reported again with every window
//! that passes near it.

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::ipc::reader::StreamReader;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use korvid_common::sql::{PreparedQuery, SqlSession};
use korvid_schemas::{
    Detector, Evidence, Finding, GraphWindow, Severity, Subject, Tactic, WindowKind, window_tables,
};
use sha2::{Digest, Sha256};

use crate::prefilter::Prefilter;
use crate::rules::{Rule, RuleCatalog, RuleLoadError};

/// Columns a rule query must return.
const REQUIRED: [&str; 2] = ["subject_kind", "subject_name"];
/// Columns that shape the finding rather than its evidence: the subject, and `severity`, with
/// which a row overrides the rule's default (a rule lowers a hit that its context explains).
const FINDING_COLUMNS: [&str; 5] = [
    "subject_kind",
    "subject_name",
    "subject_namespace",
    "subject_uid",
    "severity",
];

/// A window that cannot be evaluated: bad input, dead-lettered by the caller.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A table is not a valid Arrow IPC stream or has the wrong schema.
    #[error("graph window {window}: table `{table}` is unusable: {reason}")]
    BadTable {
        /// Window id.
        window: String,
        /// Table name.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The result of one window: findings, and rules that failed on it.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Findings, one per rule hit.
    pub findings: Vec<Finding>,
    /// (rule id, error) for rules whose execution failed on this window.
    pub failed_rules: Vec<(String, String)>,
    /// Rules not run because the window cannot match them (see [`crate::prefilter`]).
    pub skipped_rules: usize,
    /// The window's tables as decoded for the rules, for what runs after them (the graph
    /// model's features) so nothing decodes a window twice.
    pub tables: WindowTables,
}

impl Evaluation {
    /// Gives every finding whose subject has Kubernetes labels a `labels` evidence column
    /// (`k=v,...`, from the window's `nodes`), so exceptions and notify routes can match
    /// `label.KEY`. Idempotent; a rule that returns its own `labels` column keeps it.
    pub fn attach_labels(&mut self) {
        let wanted: HashSet<String> = self
            .findings
            .iter()
            .filter(|f| !f.evidence.iter().any(|e| e.name == "labels"))
            .map(|f| node_id(&f.subject))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let labels = node_labels(&self.tables.nodes, &wanted);
        for f in &mut self.findings {
            if f.evidence.iter().any(|e| e.name == "labels") {
                continue;
            }
            if let Some(value) = labels.get(&node_id(&f.subject)) {
                f.evidence.push(Evidence {
                    name: "labels".into(),
                    value: value.clone(),
                });
            }
        }
    }
}

/// The `labels` of the `nodes` rows whose id is in `wanted`.
fn node_labels(nodes: &[RecordBatch], wanted: &HashSet<String>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for b in nodes {
        let (Some(ids), Some(labels)) = (b.column_by_name("id"), b.column_by_name("labels")) else {
            continue;
        };
        let (Some(ids), Some(labels)) = (ids.as_string_opt::<i32>(), labels.as_string_opt::<i32>())
        else {
            continue;
        };
        for i in 0..ids.len() {
            if ids.is_valid(i) && labels.is_valid(i) && wanted.contains(ids.value(i)) {
                out.insert(ids.value(i).to_string(), labels.value(i).to_string());
            }
        }
    }
    out
}

/// A window's decoded `nodes`, `edges` and `activity` tables.
#[derive(Debug, Default, Clone)]
pub struct WindowTables {
    /// `nodes` batches.
    pub nodes: Vec<RecordBatch>,
    /// `edges` batches.
    pub edges: Vec<RecordBatch>,
    /// `activity` batches.
    pub activity: Vec<RecordBatch>,
}

/// The catalog, planned against the window tables.
pub struct RuleEngine {
    session: SqlSession,
    rules: Vec<(Rule, PreparedQuery)>,
    /// Per rule: whether it reads object state only.
    state_only: Vec<bool>,
    errors: Vec<RuleLoadError>,
    prefilter: Option<Prefilter>,
}

impl RuleEngine {
    /// Plans every rule. Rules whose SQL does not plan, or lacks the subject columns, are
    /// reported in [`RuleEngine::errors`] and skipped.
    pub async fn new(catalog: RuleCatalog) -> Result<Self, datafusion::error::DataFusionError> {
        let session = SqlSession::new(&[
            ("nodes", window_tables::nodes()),
            ("edges", window_tables::edges()),
            ("activity", window_tables::activity()),
            ("kube_events", window_tables::kube_events()),
        ])?;
        let mut errors = catalog.errors;
        let mut rules = Vec::new();
        for rule in catalog.rules {
            match session.prepare(&rule.query).await {
                Ok(q) => {
                    let schema = q.schema();
                    let missing: Vec<_> = REQUIRED
                        .iter()
                        .filter(|c| schema.field_with_name(c).is_err())
                        .collect();
                    if missing.is_empty() {
                        rules.push((rule, q));
                    } else {
                        errors.push(RuleLoadError {
                            file: rule.source.clone(),
                            rule: rule.id.clone(),
                            reason: format!("query does not return {missing:?}"),
                        });
                    }
                }
                Err(e) => errors.push(RuleLoadError {
                    file: rule.source.clone(),
                    rule: rule.id.clone(),
                    reason: format!("SQL error: {e}"),
                }),
            }
        }
        let prefilter = Prefilter::new(rules.iter().map(|(_, q)| q.logical_plan()));
        let state_only = rules
            .iter()
            .map(|(_, q)| {
                let read = tables_read(q.logical_plan());
                !read.contains("activity") && !read.contains("kube_events")
            })
            .collect();
        tracing::debug!(
            rules = rules.len(),
            decidable = prefilter.decidable(),
            "rules the window's contents can rule out"
        );
        Ok(RuleEngine {
            session,
            rules,
            state_only,
            errors,
            prefilter: Some(prefilter),
        })
    }

    /// Runs every rule on every window, even ones whose contents cannot match it (for
    /// benchmarks and equivalence tests of the prefilter).
    pub fn without_prefilter(mut self) -> Self {
        self.prefilter = None;
        self
    }

    /// The rules that will run.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(r, _)| r)
    }

    /// Whether rule `id` judges object state only (reads neither `activity` nor
    /// `kube_events`); unknown ids are not.
    pub fn is_state_only(&self, id: &str) -> bool {
        self.rules
            .iter()
            .zip(&self.state_only)
            .any(|((r, _), state)| *state && r.id == id)
    }

    /// Rules that could not be loaded or planned.
    pub fn errors(&self) -> &[RuleLoadError] {
        &self.errors
    }

    /// Runs every rule over one window.
    #[tracing::instrument(name = "detect.evaluate", skip_all, fields(window = %window.window_id, events = window.event_count))]
    pub async fn evaluate(
        &self,
        window: &GraphWindow,
        detected_at: i64,
    ) -> Result<Evaluation, EvalError> {
        let mut tables = Vec::with_capacity(4);
        for (name, bytes, schema) in [
            ("nodes", &window.nodes, window_tables::nodes()),
            ("edges", &window.edges, window_tables::edges()),
            ("activity", &window.activity, window_tables::activity()),
            (
                "kube_events",
                &window.kube_events,
                window_tables::kube_events(),
            ),
        ] {
            // Windows without Kubernetes Events carry no kube_events stream at all.
            let batches = if bytes.is_empty() {
                Ok(Vec::new())
            } else {
                read_ipc(bytes)
            }
            .map_err(|reason| EvalError::BadTable {
                window: window.window_id.clone(),
                table: name,
                reason,
            })?;
            tables.push((name, batches, schema));
        }
        let focus = match window.kind {
            WindowKind::Full => None,
            WindowKind::Incremental => Some(focus_ids(
                tables
                    .iter()
                    .find(|(name, _, _)| *name == "nodes")
                    .map_or(&[][..], |(_, b, _)| b.as_slice()),
            )),
        };
        let present = self.prefilter.as_ref().map(|p| {
            p.present(|table| {
                tables
                    .iter()
                    .find(|(name, _, _)| *name == table)
                    .map_or(&[][..], |(_, b, _)| b.as_slice())
            })
        });
        let mut kept = WindowTables::default();
        for (name, batches, schema) in tables {
            // Cheap: record batches share their buffers.
            match name {
                "nodes" => kept.nodes = batches.clone(),
                "edges" => kept.edges = batches.clone(),
                "activity" => kept.activity = batches.clone(),
                _ => {}
            }
            self.session
                .load(name, batches)
                .map_err(|e| EvalError::BadTable {
                    window: window.window_id.clone(),
                    table: name,
                    reason: format!("{e} (expected {schema:?})"),
                })?;
        }
        let mut out = Evaluation {
            tables: kept,
            ..Evaluation::default()
        };
        let run: Vec<usize> = (0..self.rules.len())
            .filter(|i| match (&self.prefilter, &present) {
                (Some(p), Some(present)) => !p.skips(*i, present),
                _ => true,
            })
            .collect();
        out.skipped_rules = self.rules.len() - run.len();
        let queries: Vec<&PreparedQuery> = run.iter().map(|i| &self.rules[*i].1).collect();
        let results = self.session.run_all(&queries).await;
        for (i, result) in run.into_iter().zip(results) {
            let rule = &self.rules[i].0;
            let focus = focus.as_ref().filter(|_| self.state_only[i]);
            match result {
                Ok(batches) => {
                    for b in &batches {
                        out.findings
                            .extend(findings_from(rule, window, b, detected_at, focus));
                    }
                }
                Err(e) => out.failed_rules.push((rule.id.clone(), e.to_string())),
            }
        }
        out.attach_labels();
        Ok(out)
    }
}

fn read_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let reader =
        StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Every table a plan scans (subqueries in expressions included).
fn tables_read(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            out.insert(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Ids of the nodes a window is about (`in_focus`).
fn focus_ids(nodes: &[RecordBatch]) -> HashSet<String> {
    let mut out = HashSet::new();
    for b in nodes {
        let (Some(ids), Some(focus)) = (b.column_by_name("id"), b.column_by_name("in_focus"))
        else {
            continue;
        };
        let (Some(ids), Some(focus)) = (ids.as_string_opt::<i32>(), focus.as_boolean_opt()) else {
            continue;
        };
        for i in 0..ids.len() {
            if focus.is_valid(i) && focus.value(i) && ids.is_valid(i) {
                out.insert(ids.value(i).to_string());
            }
        }
    }
    out
}

/// A subject's node id (`kind/namespace/name`), as the window tables spell it.
fn node_id(s: &Subject) -> String {
    format!(
        "{}/{}/{}",
        s.kind,
        s.namespace.as_deref().unwrap_or(""),
        s.name
    )
}

fn findings_from(
    rule: &Rule,
    window: &GraphWindow,
    batch: &RecordBatch,
    detected_at: i64,
    focus: Option<&HashSet<String>>,
) -> Vec<Finding> {
    let opts = FormatOptions::default();
    let schema = batch.schema();
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect();
    let cell = |col: usize, row: usize| -> Option<String> {
        if batch.column(col).is_null(row) {
            return None;
        }
        formatters[col]
            .as_ref()
            .ok()
            .map(|f| f.value(row).to_string())
    };
    let index = |name: &str| schema.index_of(name).ok();
    let (Some(kind_i), Some(name_i)) = (index("subject_kind"), index("subject_name")) else {
        return Vec::new();
    };
    let ns_i = index("subject_namespace");
    let uid_i = index("subject_uid");
    let severity_i = index("severity");
    let mut out = Vec::new();
    for row in 0..batch.num_rows() {
        let (Some(kind), Some(name)) = (cell(kind_i, row), cell(name_i, row)) else {
            tracing::warn!(rule = %rule.id, "rule returned a row without subject_kind/subject_name; skipped");
            continue;
        };
        let subject = Subject {
            kind,
            namespace: ns_i.and_then(|i| cell(i, row)).filter(|s| !s.is_empty()),
            name,
            uid: uid_i.and_then(|i| cell(i, row)),
        };
        if focus.is_some_and(|f| !f.contains(&node_id(&subject))) {
            continue;
        }
        let evidence = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !FINDING_COLUMNS.contains(&f.name().as_str()))
            .filter_map(|(i, f)| {
                cell(i, row).map(|value| Evidence {
                    name: f.name().clone(),
                    value,
                })
            })
            .collect();
        let severity = match severity_i.and_then(|i| cell(i, row)) {
            None => rule.severity,
            Some(s) => Severity::parse(&s).unwrap_or_else(|| {
                tracing::warn!(rule = %rule.id, value = %s, "rule returned an unknown severity; the rule's own applies");
                rule.severity
            }),
        };
        out.push(Finding {
            cluster: window.cluster.clone(),
            event_time: window.window_end,
            id: finding_id(&rule.id, &subject, &window.window_id),
            fingerprint: fingerprint(rule.tactic, &rule.id, &window.cluster, &subject),
            window_id: window.window_id.clone(),
            detected_at,
            detector: Detector::Rule,
            rule_id: Some(rule.id.clone()),
            model_version: None,
            score: 1.0,
            title: rule.title.clone(),
            tactic: rule.tactic,
            techniques: rule.techniques.clone(),
            severity,
            subject,
            evidence,
            implication: rule.implication.clone(),
            remediation: rule.remediation.clone(),
            prevention: rule.prevention.clone(),
            references: rule.references.clone(),
        });
    }
    out
}

/// A short stable hash of `parts` (ids and fingerprints).
pub(crate) fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Deterministic finding id: the same rule, subject and window always give the same id.
pub fn finding_id(rule_id: &str, subject: &Subject, window_id: &str) -> String {
    digest(&["rule", rule_id, &subject.to_string(), window_id])
}

/// What notify deduplicates on: tactic, rule, cluster and subject.
pub fn fingerprint(tactic: Tactic, rule_id: &str, cluster: &str, subject: &Subject) -> String {
    digest(&[
        tactic.as_str(),
        "rule",
        rule_id,
        cluster,
        &subject.to_string(),
    ])
}
