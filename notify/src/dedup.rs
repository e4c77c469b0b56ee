//! Deduplication by fingerprint: the first finding for a fingerprint is notified; later ones
//! fold into the same alert until `repeat_interval` passes. Replays of a finding id already
//! folded in change nothing.

use std::collections::HashMap;

use korvid_schemas::{DedupState, Finding};

/// How many recent finding ids each fingerprint remembers.
const RECENT_IDS: usize = 32;

/// What to do with a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send an alert (first time, or repeat interval passed).
    Notify,
    /// Fold into the existing alert silently.
    Suppress,
    /// This exact finding was already handled (a replay).
    Replay,
}

/// Dedup state for every fingerprint this instance owns.
#[derive(Default)]
pub struct DedupStore {
    states: HashMap<String, DedupState>,
}

impl DedupStore {
    /// Restores state read from the state topic (latest record per fingerprint last).
    pub fn restore(states: impl IntoIterator<Item = DedupState>) -> Self {
        let mut store = DedupStore::default();
        for s in states {
            store.states.insert(s.fingerprint.clone(), s);
        }
        store
    }

    /// Fingerprints known.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Decides what to do with `finding` at `now` (ms).
    pub fn decide(&self, finding: &Finding, now: i64, repeat_interval_ms: i64) -> Decision {
        match self.states.get(&finding.fingerprint) {
            None => Decision::Notify,
            Some(s) if s.recent_finding_ids.contains(&finding.id) => Decision::Replay,
            Some(s) if now - s.last_notified >= repeat_interval_ms => Decision::Notify,
            Some(_) => Decision::Suppress,
        }
    }

    /// The state after folding `finding` in (not yet stored; see [`DedupStore::commit`]).
    pub fn next_state(&self, finding: &Finding, decision: &Decision, now: i64) -> DedupState {
        let seen = finding.event_time;
        match self.states.get(&finding.fingerprint) {
            None => DedupState {
                cluster: finding.cluster.clone(),
                event_time: now,
                fingerprint: finding.fingerprint.clone(),
                alert_id: format!("{}-{}", finding.fingerprint, seen),
                first_seen: seen,
                last_seen: seen,
                last_notified: now,
                occurrences: 1,
                recent_finding_ids: vec![finding.id.clone()],
            },
            Some(prev) => {
                let mut s = prev.clone();
                s.event_time = now;
                s.last_seen = s.last_seen.max(seen);
                s.occurrences += 1;
                if *decision == Decision::Notify {
                    s.last_notified = now;
                }
                s.recent_finding_ids.push(finding.id.clone());
                let excess = s.recent_finding_ids.len().saturating_sub(RECENT_IDS);
                s.recent_finding_ids.drain(..excess);
                s
            }
        }
    }

    /// Records a state once it is safely on the state topic.
    pub fn commit(&mut self, state: DedupState) {
        self.states.insert(state.fingerprint.clone(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use korvid_schemas::*;

    fn finding(id: &str, t: i64) -> Finding {
        Finding {
            cluster: "c".into(),
            event_time: t,
            id: id.into(),
            fingerprint: "fp".into(),
            window_id: "w".into(),
            detected_at: t,
            detector: Detector::Rule,
            rule_id: Some("KOR-0001".into()),
            model_version: None,
            score: 1.0,
            title: "t".into(),
            tactic: Tactic::Execution,
            techniques: vec![],
            severity: Severity::High,
            subject: Subject {
                kind: "Pod".into(),
                namespace: None,
                name: "p".into(),
                uid: None,
            },
            evidence: vec![],
            implication: "i".into(),
            remediation: "r".into(),
            prevention: "p".into(),
            references: vec![],
        }
    }

    #[test]
    fn notify_once_then_suppress_then_repeat() {
        let mut store = DedupStore::default();
        let f1 = finding("a", 1000);
        assert_eq!(store.decide(&f1, 1000, 10_000), Decision::Notify);
        let s = store.next_state(&f1, &Decision::Notify, 1000);
        store.commit(s);
        assert_eq!(store.decide(&f1, 1500, 10_000), Decision::Replay);
        let f2 = finding("b", 3000);
        assert_eq!(store.decide(&f2, 3000, 10_000), Decision::Suppress);
        let s = store.next_state(&f2, &Decision::Suppress, 3000);
        assert_eq!(s.occurrences, 2);
        assert_eq!(s.last_notified, 1000);
        store.commit(s);
        let f3 = finding("c", 20_000);
        assert_eq!(store.decide(&f3, 20_000, 10_000), Decision::Notify);
    }

    #[test]
    fn restored_state_prevents_renotification() {
        let mut first = DedupStore::default();
        let f = finding("a", 1000);
        let s = first.next_state(&f, &Decision::Notify, 1000);
        first.commit(s.clone());
        let restored = DedupStore::restore([s]);
        assert_eq!(
            restored.decide(&finding("z", 2000), 2000, 10_000),
            Decision::Suppress
        );
        assert_eq!(restored.decide(&f, 2000, 10_000), Decision::Replay);
    }
}
