//! Rules and model together. The model scores every entity of a window; then
//! - a medium or high finding of a rule about object state (not activity) on an entity scored
//!   below the model's `low` threshold is lowered to low, with the score and the reason in its
//!   evidence (its context looks routine: the CNI DaemonSet that is privileged like every CNI).
//!   Findings about what someone did are never lowered: on techniques it was not trained on,
//!   the model is confidently wrong (detect/model/MODEL.md), and a missed action costs more
//!   than a noisy posture finding;
//! - a medium-or-louder rule finding on an entity at or above `high` is raised one level (it
//!   is on an attack path), with the path as evidence;
//! - an entity at or above `high` that no rule flagged (medium or louder) gets a finding of its
//!   own (`detector: model`), its tactic the model's likeliest, its evidence the entities and
//!   relations around it that carry the score.
//!
//! Critical rule findings are never lowered. Both thresholds come from the model file (chosen
//! on validation seeds by `detect/model/train.py`); the training script replays this logic to
//! report what the fused system does.

use std::collections::HashSet;

use korvid_schemas::{Detector, Evidence, Finding, GraphWindow, Severity, Subject, Tactic};

use super::features::{WindowGraph, subject_id};
use super::runtime::{ModelInfo, Scores};
use crate::engine::digest;

/// Most relations listed as a model finding's path.
const PATH_EDGES: usize = 8;

/// What fusion did to one window's findings.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FusionOutcome {
    /// Rule findings lowered to low.
    pub lowered: usize,
    /// Rule findings raised one level.
    pub raised: usize,
    /// Findings the model raised on its own.
    pub model_findings: usize,
}

fn lower(s: Severity) -> bool {
    matches!(s, Severity::Medium | Severity::High)
}

fn raise(s: Severity) -> Severity {
    match s {
        Severity::Low => Severity::Medium,
        Severity::Medium => Severity::High,
        Severity::High | Severity::Critical => Severity::Critical,
    }
}

/// Re-scores `findings` (this window's rule findings) and appends the model's own;
/// `lowerable` says which findings may be lowered (those of state rules).
pub fn fuse(
    window: &GraphWindow,
    graph: &WindowGraph,
    scores: &Scores,
    info: &ModelInfo,
    findings: &mut Vec<Finding>,
    detected_at: i64,
    lowerable: impl Fn(&Finding) -> bool,
) -> FusionOutcome {
    let mut outcome = FusionOutcome::default();
    let index: std::collections::HashMap<&str, usize> = graph
        .node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut loud: HashSet<usize> = HashSet::new();
    for f in findings.iter_mut() {
        let Some(&i) = index.get(subject_id(f).as_str()) else {
            continue;
        };
        let risk = scores.risk[i];
        if f.severity >= Severity::Medium {
            loud.insert(i);
        }
        if lower(f.severity) && risk < info.fusion_low && lowerable(f) {
            f.severity = Severity::Low;
            f.detector = Detector::Fused;
            f.model_version = Some(info.version.clone());
            f.score = f64::from(risk);
            f.evidence.push(Evidence {
                name: "model".into(),
                value: format!(
                    "lowered to low: the graph model scores this entity {risk:.3} in its \
                     window's context (below {}), i.e. like routine activity",
                    info.fusion_low
                ),
            });
            outcome.lowered += 1;
        } else if risk >= info.fusion_high && f.severity >= Severity::Medium {
            f.severity = raise(f.severity);
            f.detector = Detector::Fused;
            f.model_version = Some(info.version.clone());
            f.score = f64::from(risk);
            f.evidence.push(Evidence {
                name: "model".into(),
                value: format!("raised: on an attack path the graph model scores {risk:.3}"),
            });
            f.evidence.push(Evidence {
                name: "path".into(),
                value: path(graph, scores, i),
            });
            outcome.raised += 1;
        }
    }
    for i in 0..graph.node_count() {
        let risk = scores.risk[i];
        if risk < info.fusion_high || loud.contains(&i) {
            continue;
        }
        findings.push(model_finding(window, graph, scores, info, i, detected_at));
        outcome.model_findings += 1;
    }
    outcome
}

/// The relations around entity `i` that carry its score: its edges, riskiest neighbours
/// first, as `src -relation-> dst (risk)`.
fn path(graph: &WindowGraph, scores: &Scores, i: usize) -> String {
    let mut edges: Vec<(f32, String)> = (0..graph.edge_src.len())
        .filter(|&e| graph.edge_src[e] as usize == i || graph.edge_dst[e] as usize == i)
        .map(|e| {
            let (s, d) = (graph.edge_src[e] as usize, graph.edge_dst[e] as usize);
            let other = if s == i { d } else { s };
            (
                scores.risk[other],
                format!(
                    "{} -{}-> {} ({:.2})",
                    graph.node_ids[s],
                    graph.relation_name(e),
                    graph.node_ids[d],
                    scores.risk[other]
                ),
            )
        })
        .collect();
    edges.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    edges.dedup_by(|a, b| a.1 == b.1);
    let more = edges.len().saturating_sub(PATH_EDGES);
    let mut text = edges
        .into_iter()
        .take(PATH_EDGES)
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    if text.is_empty() {
        text = "no relations in this window: scored on its own attributes".into();
    }
    text
}

fn subject_of(id: &str) -> Subject {
    let mut parts = id.splitn(3, '/');
    let kind = parts.next().unwrap_or_default().to_string();
    let ns = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default().to_string();
    Subject {
        kind,
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        name,
        uid: None,
    }
}

fn model_finding(
    window: &GraphWindow,
    graph: &WindowGraph,
    scores: &Scores,
    info: &ModelInfo,
    i: usize,
    detected_at: i64,
) -> Finding {
    let tactic_scores = scores.tactics_of(i);
    let (best, p) = tactic_scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(k, p)| (Tactic::ALL[k], *p))
        .unwrap_or((Tactic::ALL[0], 0.0));
    let risk = scores.risk[i];
    let subject = subject_of(&graph.node_ids[i]);
    let subject_text = subject.to_string();
    let id = digest(&["model", best.as_str(), &subject_text, &window.window_id]);
    let fingerprint = digest(&[best.as_str(), "model", &window.cluster, &subject_text]);
    Finding {
        cluster: window.cluster.clone(),
        event_time: window.window_end,
        id,
        fingerprint,
        window_id: window.window_id.clone(),
        detected_at,
        detector: Detector::Model,
        rule_id: None,
        model_version: Some(info.version.clone()),
        score: f64::from(risk),
        title: format!(
            "{} on an attack path the rules did not flag ({})",
            subject_text,
            best.display_name()
        ),
        tactic: best,
        techniques: Vec::new(),
        severity: if risk >= 0.9 {
            Severity::High
        } else {
            Severity::Medium
        },
        subject,
        evidence: vec![
            Evidence {
                name: "risk".into(),
                value: format!("{risk:.3}"),
            },
            Evidence {
                name: "tactic_score".into(),
                value: format!("{} {p:.3}", best.as_str()),
            },
            Evidence {
                name: "path".into(),
                value: path(graph, scores, i),
            },
        ],
        implication: format!(
            "The graph model, trained on simulated attack campaigns, scores this entity and \
             the relations around it like the {} stage of an attack, though no single rule \
             matched. Entities and relations that drive the score are listed under `path`.",
            best.display_name()
        ),
        remediation: "Review the listed relations: who acted, on what, and whether it was \
                      expected. If it was, record an exception (detect.exceptions) so the \
                      finding stops."
            .into(),
        prevention: "Least-privilege RBAC and admission policy for the relations involved; \
                     write a rule for the pattern once understood (korvid rules)."
            .into(),
        references: vec!["https://microsoft.github.io/Threat-Matrix-for-Kubernetes/".into()],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use korvid_schemas::WindowKind;

    fn window() -> GraphWindow {
        GraphWindow {
            cluster: "c".into(),
            event_time: 2_000,
            window_id: "w1".into(),
            kind: WindowKind::Incremental,
            partition_key: "c/default".into(),
            window_start: 1_000,
            window_end: 2_000,
            split_index: 0,
            split_count: 1,
            event_count: 3,
            nodes: Vec::new(),
            edges: Vec::new(),
            activity: Vec::new(),
            kube_events: Vec::new(),
        }
    }

    /// A rule finding about `subject` (`Kind/namespace/name`) in window `w1`.
    pub(crate) fn finding(subject: &str, severity: Severity) -> Finding {
        let s = subject_of(subject);
        Finding {
            cluster: "c".into(),
            event_time: 2_000,
            id: format!("id-{subject}"),
            fingerprint: format!("fp-{subject}"),
            window_id: "w1".into(),
            detected_at: 0,
            detector: Detector::Rule,
            rule_id: Some("KOR-0001".into()),
            model_version: None,
            score: 1.0,
            title: "t".into(),
            tactic: Tactic::Execution,
            techniques: vec![],
            severity,
            subject: s,
            evidence: vec![],
            implication: String::new(),
            remediation: String::new(),
            prevention: String::new(),
            references: vec![],
        }
    }

    #[test]
    fn lowers_routine_raises_paths_and_adds_what_rules_missed() {
        let graph = WindowGraph {
            node_ids: vec![
                "DaemonSet/kube-system/cni".into(),
                "Pod/default/shell".into(),
                "ServiceAccount/default/builder".into(),
                "Secret/default/token".into(),
            ],
            features: vec![0.0; 4 * super::super::features::feature_count()],
            edge_src: vec![2, 2],
            edge_dst: vec![1, 3],
            edge_type: vec![18, 23],
        };
        let t = Tactic::ALL.len();
        let mut tactics = vec![0.0; 4 * t];
        tactics[2 * t + 5] = 0.8; // credential access
        let scores = Scores {
            risk: vec![0.01, 0.95, 0.97, 0.3],
            tactics,
        };
        let info = ModelInfo {
            version: "abc".into(),
            fusion_low: 0.05,
            fusion_high: 0.9,
        };
        let mut findings = vec![
            finding("DaemonSet/kube-system/cni", Severity::High),
            finding("Pod/default/shell", Severity::High),
            finding("Secret/default/token", Severity::Critical),
        ];
        findings[0].rule_id = Some("KOR-0110".into());
        let state_rule = |f: &Finding| f.rule_id.as_deref() == Some("KOR-0110");
        // An activity finding on the same low-risk entity is not lowered.
        let mut activity = vec![finding("DaemonSet/kube-system/cni", Severity::High)];
        fuse(
            &window(),
            &graph,
            &scores,
            &info,
            &mut activity,
            5,
            state_rule,
        );
        assert_eq!(activity[0].severity, Severity::High);
        let out = fuse(
            &window(),
            &graph,
            &scores,
            &info,
            &mut findings,
            5,
            state_rule,
        );
        assert_eq!(
            out,
            FusionOutcome {
                lowered: 1,
                raised: 1,
                model_findings: 1
            }
        );
        assert_eq!(findings[0].severity, Severity::Low);
        assert_eq!(findings[0].detector, Detector::Fused);
        assert!(findings[0].evidence[0].value.contains("0.010"));
        assert_eq!(findings[1].severity, Severity::Critical);
        assert_eq!(
            findings[2].severity,
            Severity::Critical,
            "critical is never lowered"
        );
        let model = &findings[3];
        assert_eq!(model.detector, Detector::Model);
        assert_eq!(model.tactic, Tactic::CredentialAccess);
        assert_eq!(model.subject.to_string(), "ServiceAccount/default/builder");
        assert_eq!(model.severity, Severity::High);
        let path = &model
            .evidence
            .iter()
            .find(|e| e.name == "path")
            .expect("path")
            .value;
        assert_eq!(
            path,
            "ServiceAccount/default/builder -exec-> Pod/default/shell (0.95); \
             ServiceAccount/default/builder -get_secret-> Secret/default/token (0.30)"
        );
        // Without rule findings, both risky entities get model findings; ids are
        // deterministic (the same window gives the same id).
        let mut again = vec![];
        fuse(&window(), &graph, &scores, &info, &mut again, 9, state_rule);
        assert_eq!(again.len(), 2);
        let same = again
            .iter()
            .find(|f| f.subject == model.subject)
            .expect("the service account again");
        assert_eq!(same.id, model.id);
        assert_eq!(same.fingerprint, model.fingerprint);
    }
}

#[cfg(test)]
mod catalog {
    use crate::{RuleCatalog, RuleEngine};

    /// The training script decides "state rule" by id (KOR-01xx) where detect reads the plan;
    /// the built-in catalog keeps the two the same.
    #[tokio::test]
    async fn the_state_rules_are_the_inventory_rules() {
        let engine = RuleEngine::new(RuleCatalog::load(true, &[], &[]))
            .await
            .expect("engine");
        for r in engine.rules() {
            assert_eq!(
                engine.is_state_only(&r.id),
                r.id.starts_with("KOR-01"),
                "{}",
                r.id
            );
        }
    }
}
