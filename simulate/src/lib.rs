//! `korvid simulate`: deterministic synthetic clusters with realistic benign behaviour and
//! labelled attack campaigns, written as the inputs ingest reads (a `kubectl get -A -o json`
//! style List of objects, an audit log of JSON lines, Trivy reports) plus ground truth.
//!
//! The same seed and settings give byte-identical output. A campaign enters through a pod
//! (preferably an exposed one with critical CVEs, whose service account token the attacker
//! steals) and chains techniques of the library ([`techniques::LIBRARY`], all ten tactics) in
//! kill-chain order; every step is a [`Label`] with its technique, tactic, MITRE ids, time span
//! and the entities it touched. Notable benign behaviour (CI execs, backups reading secrets,
//! Helm rollouts, developers debugging) is labelled too, as not malicious, so false alerts can
//! be counted against it.
//!
//! Entry points: [`simulate`], then [`Simulation::write_dir`].

pub mod audit;
pub mod cluster;
pub mod rng;
pub mod techniques;
mod traffic;

use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::cluster::{Cluster, Pod};
use crate::rng::Rng;
use crate::techniques::{Actor, LIBRARY, Step, TACTICS, Technique};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Everything follows from it.
    pub seed: u64,
    /// Application namespaces.
    pub namespaces: usize,
    /// Pods per application namespace (about).
    pub pods_per_namespace: usize,
    /// Simulated time, seconds.
    pub duration_s: u64,
    /// Benign audit events per second.
    pub rate: u32,
    /// Attack campaigns spread over the duration.
    pub campaigns: usize,
    /// Technique ids campaigns must not use (held out of training, for instance).
    pub exclude: Vec<String>,
    /// Technique ids campaigns may only use (empty: all but `exclude`).
    pub only: Vec<String>,
    /// Start of simulated time (Unix ms).
    pub start_ms: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            namespaces: 8,
            pods_per_namespace: 6,
            duration_s: 600,
            rate: 20,
            campaigns: 3,
            exclude: Vec::new(),
            only: Vec::new(),
            // 2026-01-01T00:00:00Z
            start_ms: 1_767_225_600_000,
        }
    }
}

/// Settings that cannot be simulated.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A technique id is not in the library.
    #[error("unknown technique `{0}`; `korvid simulate --list` shows the library")]
    UnknownTechnique(String),
    /// Nothing to simulate with.
    #[error("{0}")]
    Invalid(String),
    /// Output could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Ground truth for one step of a campaign, or one notable benign action.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Label {
    /// Whether it is part of an attack.
    pub malicious: bool,
    /// Campaign id (`c1`, `c2`, ...) for attack steps.
    pub campaign: Option<String>,
    /// Position in the campaign (1-based).
    pub step: Option<u32>,
    /// Technique id (library id for attacks, a behaviour name for benign actions).
    pub technique: String,
    /// What happened.
    pub description: String,
    /// Tactic (snake_case), for attack steps.
    pub tactic: Option<String>,
    /// MITRE ATT&CK technique ids.
    pub mitre: Vec<String>,
    /// First request (Unix ms).
    pub start_ms: i64,
    /// Last request (Unix ms).
    pub end_ms: i64,
    /// The identity acting.
    pub actor: Option<String>,
    /// Entities touched or created (`Kind/namespace/name`, as the window tables spell them).
    pub entities: Vec<String>,
    /// The `auditID`s of its requests (findings cite them in `sample_event_ids`).
    pub audit_ids: Vec<String>,
}

impl Label {
    pub(crate) fn benign(
        behaviour: &str,
        description: &str,
        start_ms: i64,
        end_ms: i64,
        entities: Vec<String>,
    ) -> Self {
        Label {
            malicious: false,
            campaign: None,
            step: None,
            technique: behaviour.into(),
            description: description.into(),
            tactic: None,
            mitre: Vec::new(),
            start_ms,
            end_ms,
            actor: None,
            entities,
            audit_ids: Vec::new(),
        }
    }

    pub(crate) fn with_events(mut self, events: &[AuditLine]) -> Self {
        self.audit_ids = events.iter().map(|e| e.audit_id.clone()).collect();
        self
    }
}

/// One audit event, serialised as it is written (a simulation holds hundreds of thousands;
/// as JSON values they took several times the memory).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditLine {
    /// When (Unix ms).
    pub at_ms: i64,
    /// Its `auditID`.
    pub audit_id: String,
    /// The event, as one line of JSON.
    pub json: String,
}

/// A simulated cluster with its traffic and ground truth.
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    /// Objects and image scans.
    pub cluster: Cluster,
    /// Audit events, in time order once [`simulate`] returns.
    pub audit: Vec<AuditLine>,
    /// Attack steps and notable benign actions, in time order.
    pub labels: Vec<Label>,
}

/// Runs a simulation.
pub fn simulate(config: &SimConfig) -> Result<Simulation, SimError> {
    if config.namespaces == 0 || config.pods_per_namespace == 0 {
        return Err(SimError::Invalid(
            "a cluster needs at least one namespace and one pod per namespace".into(),
        ));
    }
    for id in config.exclude.iter().chain(&config.only) {
        if !LIBRARY.iter().any(|t| t.id == id) {
            return Err(SimError::UnknownTechnique(id.clone()));
        }
    }
    let root = Rng::new(config.seed);
    let cluster = cluster::build(
        &mut root.fork("cluster"),
        config.namespaces,
        config.pods_per_namespace,
    );
    let mut sim = Simulation {
        cluster,
        ..Simulation::default()
    };
    let duration_ms = config.duration_s as i64 * 1000;
    let snapshot = sim.cluster.clone();
    traffic::generate(
        &mut root.fork("traffic"),
        &snapshot,
        config.start_ms,
        duration_ms,
        config.rate,
        &mut sim,
    );
    let allowed: Vec<&Technique> = LIBRARY
        .iter()
        .filter(|t| !config.exclude.iter().any(|e| e == t.id))
        .filter(|t| config.only.is_empty() || config.only.iter().any(|o| o == t.id))
        .collect();
    let mut rng = root.fork("campaigns");
    for i in 0..config.campaigns {
        let start = config.start_ms + duration_ms * (i as i64 + 1) / (config.campaigns as i64 + 1);
        campaign(&mut rng, &snapshot, &allowed, i + 1, start, &mut sim);
    }
    sim.audit.sort_by_key(|e| e.at_ms);
    sim.labels
        .sort_by(|a, b| (a.start_ms, &a.technique).cmp(&(b.start_ms, &b.technique)));
    Ok(sim)
}

/// The pod a campaign enters through: exposed and vulnerable if there is one.
fn foothold<'a>(rng: &mut Rng, c: &'a Cluster) -> &'a Pod {
    let pods: Vec<&Pod> = c.namespaces.iter().flat_map(|n| n.pods.iter()).collect();
    let best: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.exposed && p.critical_cves > 0)
        .collect();
    let exposed: Vec<&Pod> = pods.iter().copied().filter(|p| p.exposed).collect();
    let from = if !best.is_empty() {
        best
    } else if !exposed.is_empty() {
        exposed
    } else {
        pods
    };
    from[rng.below(from.len())]
}

fn campaign(
    rng: &mut Rng,
    c: &Cluster,
    allowed: &[&Technique],
    n: usize,
    start: i64,
    sim: &mut Simulation,
) {
    if allowed.is_empty() {
        return;
    }
    let entry = foothold(rng, c).clone();
    let actor = Actor {
        user: format!(
            "system:serviceaccount:{}:{}",
            entry.namespace, entry.service_account
        ),
        ip: format!("203.0.113.{}", rng.between(2, 254)),
        agent: if rng.chance(0.5) {
            "kubectl/v1.30.1 (linux/amd64) kubernetes/7d3a7b5".into()
        } else {
            "curl/8.5.0".into()
        },
    };
    // One technique per tactic, in kill-chain order: initial access always (when allowed),
    // then each later tactic with even odds, at least three steps in all.
    let mut chain: Vec<&Technique> = Vec::new();
    for (i, tactic) in TACTICS.iter().enumerate() {
        let of_tactic: Vec<&Technique> = allowed
            .iter()
            .copied()
            .filter(|t| t.tactic == *tactic)
            .collect();
        if of_tactic.is_empty() {
            continue;
        }
        let left = TACTICS.len() - i;
        if i == 0 || rng.chance(0.5) || chain.len() + left <= 3 {
            chain.push(of_tactic[rng.below(of_tactic.len())]);
        }
    }
    let mut step = Step {
        rng,
        cluster: c,
        foothold: &entry,
        actor,
        t: start,
        events: Vec::new(),
        entities: Vec::new(),
        scripted: false,
    };
    for (k, technique) in chain.iter().enumerate() {
        let first = step.t;
        let acting = step.actor.user.clone();
        step.events.clear();
        step.entities.clear();
        step.scripted = false;
        (technique.run)(&mut step);
        let last = step.events.last().map_or(first, |(t, _)| *t);
        let from = sim.audit.len();
        for event in step.events.drain(..) {
            sim.record(event);
        }
        let ids = sim.audit[from..]
            .iter()
            .map(|e| e.audit_id.clone())
            .collect();
        sim.labels.push(Label {
            malicious: true,
            campaign: Some(format!("c{n}")),
            step: Some(k as u32 + 1),
            technique: technique.id.into(),
            description: technique.name.into(),
            tactic: Some(technique.tactic.into()),
            mitre: technique.mitre.iter().map(|m| (*m).to_string()).collect(),
            start_ms: first,
            end_ms: last,
            actor: Some(acting),
            entities: step.entities.clone(),
            audit_ids: ids,
        });
        step.t = last + step.rng.between(5_000, 90_000) as i64;
    }
}

impl Simulation {
    /// Keeps an audit event (time, event).
    pub(crate) fn record(&mut self, (at_ms, event): (i64, Value)) {
        self.audit.push(AuditLine {
            at_ms,
            audit_id: event["auditID"].as_str().unwrap_or_default().to_string(),
            json: event.to_string(),
        });
    }

    /// Writes `cluster.json` (a v1 List of every object), `audit.log` (JSON lines, time order),
    /// `scans/*.json` (Trivy reports), `labels.jsonl` and `summary.json` into `dir`.
    pub fn write_dir(&self, dir: &Path) -> Result<(), SimError> {
        let write = |name: &str, bytes: Vec<u8>| -> Result<(), SimError> {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| SimError::Write {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            std::fs::write(&path, bytes).map_err(|source| SimError::Write {
                path: path.display().to_string(),
                source,
            })
        };
        let list = json!({"apiVersion": "v1", "kind": "List", "items": self.cluster.objects});
        write("cluster.json", to_json(&list))?;
        let mut log = Vec::new();
        for e in &self.audit {
            log.extend(e.json.as_bytes());
            log.push(b'\n');
        }
        write("audit.log", log)?;
        for (i, s) in self.cluster.scans.iter().enumerate() {
            write(&format!("scans/trivy-{i:04}.json"), to_json(s))?;
        }
        let mut labels = Vec::new();
        for l in &self.labels {
            labels.extend(serde_json::to_vec(l).unwrap_or_default());
            labels.push(b'\n');
        }
        write("labels.jsonl", labels)?;
        write("summary.json", to_json(&self.summary()))
    }

    /// Counts, for people and scripts.
    pub fn summary(&self) -> Value {
        let attacks: Vec<&Label> = self.labels.iter().filter(|l| l.malicious).collect();
        let mut campaigns: Vec<&str> = attacks
            .iter()
            .filter_map(|l| l.campaign.as_deref())
            .collect();
        campaigns.sort_unstable();
        campaigns.dedup();
        let mut tactics: Vec<&str> = attacks.iter().filter_map(|l| l.tactic.as_deref()).collect();
        tactics.sort_unstable();
        tactics.dedup();
        json!({
            "objects": self.cluster.objects.len(),
            "pods": self.cluster.objects.iter().filter(|o| o["kind"] == "Pod").count(),
            "namespaces": self.cluster.namespaces.len(),
            "image_scans": self.cluster.scans.len(),
            "audit_events": self.audit.len(),
            "campaigns": campaigns.len(),
            "attack_steps": attacks.len(),
            "tactics": tactics,
            "benign_labels": self.labels.len() - attacks.len(),
        })
    }
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            namespaces: 4,
            pods_per_namespace: 4,
            duration_s: 300,
            rate: 10,
            campaigns: 4,
            ..SimConfig::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_simulation() {
        let a = simulate(&small(3)).expect("sim");
        let b = simulate(&small(3)).expect("sim");
        assert_eq!(a.audit, b.audit);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.cluster.objects, b.cluster.objects);
        let c = simulate(&small(4)).expect("sim");
        assert_ne!(a.audit, c.audit);
    }

    #[test]
    fn campaigns_follow_the_kill_chain_and_are_labelled() {
        let sim = simulate(&small(11)).expect("sim");
        let steps: Vec<&Label> = sim.labels.iter().filter(|l| l.malicious).collect();
        assert!(steps.len() >= 4 * 3, "{} steps", steps.len());
        for c in 1..=4 {
            let id = format!("c{c}");
            let mine: Vec<&&Label> = steps
                .iter()
                .filter(|l| l.campaign.as_deref() == Some(id.as_str()))
                .collect();
            assert!(mine.len() >= 3, "{id}: {} steps", mine.len());
            assert_eq!(mine[0].tactic.as_deref(), Some("initial_access"));
            let order: Vec<usize> = mine
                .iter()
                .map(|l| {
                    TACTICS
                        .iter()
                        .position(|t| Some(*t) == l.tactic.as_deref())
                        .unwrap_or(99)
                })
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{id}: {order:?}");
            assert!(
                mine.iter().all(|l| l.start_ms <= l.end_ms
                    && !l.entities.is_empty()
                    && !l.mitre.is_empty())
            );
        }
        assert!(sim.labels.iter().any(|l| !l.malicious));
        assert!(
            sim.audit.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
            "audit in time order"
        );
    }

    #[test]
    fn the_library_covers_every_tactic_and_exclusions_hold() {
        assert!(LIBRARY.len() >= 20);
        for t in TACTICS {
            assert!(LIBRARY.iter().filter(|x| x.tactic == t).count() >= 2, "{t}");
        }
        let mut ids: Vec<&str> = LIBRARY.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), LIBRARY.len(), "technique ids are unique");
        let held_out = [
            "execution.exec-shell",
            "impact.miner",
            "persistence.cronjob-backdoor",
        ];
        let cfg = SimConfig {
            exclude: held_out.iter().map(|s| (*s).to_string()).collect(),
            campaigns: 12,
            ..small(5)
        };
        let sim = simulate(&cfg).expect("sim");
        assert!(
            sim.labels
                .iter()
                .all(|l| !held_out.contains(&l.technique.as_str()))
        );
        let only = SimConfig {
            only: vec!["impact.miner".into(), "initial_access.stolen-token".into()],
            ..small(5)
        };
        let sim = simulate(&only).expect("sim");
        assert!(
            sim.labels
                .iter()
                .filter(|l| l.malicious)
                .all(|l| only.only.contains(&l.technique))
        );
        assert!(matches!(
            simulate(&SimConfig {
                exclude: vec!["nope".into()],
                ..small(1)
            }),
            Err(SimError::UnknownTechnique(_))
        ));
    }
}
