//! Grouping with Alertmanager's semantics, over findings instead of alerts.
//!
//! A *fingerprint* (rule or model, tactic, cluster, subject) is one alert. Its first finding
//! opens an *episode*; later findings fold into it (`occurrences`, `last_seen`); once no finding
//! has come for `resolve_timeout` the alert is resolved and the episode closes. Alerts are
//! gathered into *groups* by the values of `group_by` (`cluster`, `namespace`, `rule`, ...).
//! A group is notified `group_wait` after it appears, then at most every `group_interval`
//! while something in it changed (a new alert, a resolution), and every `repeat_interval`
//! while it keeps firing unchanged. Each notification ([`Flush`]) lists the group's alerts and
//! says for each what changed.
//!
//! Muting: a silence (from the policy) or an *inhibition* (a firing alert of higher severity on
//! the same subject) keeps an alert out of notifications without closing it; when the mute
//! ends it is notified at the group's next turn.
//!
//! Time is whatever the caller says it is ([`Engine::advance`]): notify passes the wall clock,
//! or, when replaying history, the findings' own times, so a replayed hour groups as it
//! happened. Every timer fires at its exact due time, so the outcome does not depend on how
//! often the caller ticks. The state of each alert is a [`DedupState`] on the compacted state
//! topic; [`Engine::restore`] rebuilds groups and timers from those alone, so a restarted or
//! second instance decides exactly as the first would have.

use std::collections::{BTreeSet, HashMap};

use korvid_schemas::{Alert, AlertStatus, DedupState, Finding};
use serde::Deserialize;

/// How many recent finding ids each fingerprint remembers, to recognise replays.
const RECENT_IDS: usize = 32;

/// `notified_status` of an alert shown in a notification.
const SHOWN: &str = "firing";
/// `notified_status` of an alert kept out by a silence or an inhibition.
const MUTED: &str = "muted";

/// A value alerts can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupLabel {
    /// Cluster id.
    Cluster,
    /// Subject namespace (empty for cluster-scoped subjects).
    Namespace,
    /// Subject kind.
    Kind,
    /// The whole subject (`Pod/web/api-1`).
    Subject,
    /// Rule id (or model version).
    Rule,
    /// Tactic.
    Tactic,
    /// Severity.
    Severity,
    /// The fingerprint itself: every alert its own group.
    Fingerprint,
}

impl GroupLabel {
    /// Every label, as settings spell them.
    pub const NAMES: &'static str =
        "cluster, namespace, kind, subject, rule, tactic, severity, fingerprint";

    fn name(self) -> &'static str {
        match self {
            GroupLabel::Cluster => "cluster",
            GroupLabel::Namespace => "namespace",
            GroupLabel::Kind => "kind",
            GroupLabel::Subject => "subject",
            GroupLabel::Rule => "rule",
            GroupLabel::Tactic => "tactic",
            GroupLabel::Severity => "severity",
            GroupLabel::Fingerprint => "fingerprint",
        }
    }

    fn value(self, f: &Finding) -> String {
        match self {
            GroupLabel::Cluster => f.cluster.clone(),
            GroupLabel::Namespace => f.subject.namespace.clone().unwrap_or_default(),
            GroupLabel::Kind => f.subject.kind.clone(),
            GroupLabel::Subject => f.subject.to_string(),
            GroupLabel::Rule => f
                .rule_id
                .clone()
                .or_else(|| f.model_version.clone())
                .unwrap_or_default(),
            GroupLabel::Tactic => f.tactic.as_str().into(),
            GroupLabel::Severity => f.severity.as_str().into(),
            GroupLabel::Fingerprint => f.fingerprint.clone(),
        }
    }
}

/// The timers, in milliseconds of whatever clock the caller uses.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// What groups alerts.
    pub group_by: Vec<GroupLabel>,
    /// Wait after a group appears, to gather its first alerts into one notification.
    pub group_wait: i64,
    /// Least time between notifications of a group that changed.
    pub group_interval: i64,
    /// Time after which an unchanged, still firing group is notified again.
    pub repeat_interval: i64,
    /// Quiet time after which an alert is resolved.
    pub resolve_timeout: i64,
}

/// What a notification says about one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Firing, notified for the first time in this episode (or after a mute ended).
    New,
    /// Firing and notified before; repeated because `repeat_interval` passed.
    Repeat,
    /// Firing and notified before; listed for context only.
    Unchanged,
    /// Quiet for `resolve_timeout`: the episode is over.
    Resolved,
}

/// One notification of one group.
#[derive(Debug, Clone)]
pub struct Flush {
    /// The group (`cluster=prod,namespace=web`).
    pub group: String,
    /// When it was due.
    pub at: i64,
    /// Its alerts and what changed for each, in fingerprint order.
    pub alerts: Vec<(Alert, Change)>,
}

/// A state write the caller must make durable (in order) before storing offsets.
#[derive(Debug, Clone, PartialEq)]
pub enum StateWrite {
    /// The alert's state.
    Put(DedupState),
    /// The episode is over: a tombstone for this fingerprint.
    Delete(String),
}

/// What [`Engine::observe`] made of a finding.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Its id was already folded in (a replay after a restart): nothing changes.
    Replay,
    /// It opened a new episode.
    New(DedupState),
    /// It folded into an open episode.
    Folded(DedupState),
}

impl Observed {
    /// The state to persist, if any.
    pub fn state(&self) -> Option<&DedupState> {
        match self {
            Observed::Replay => None,
            Observed::New(s) | Observed::Folded(s) => Some(s),
        }
    }
}

struct Entry {
    state: DedupState,
    finding: Finding,
    group: String,
}

struct Group {
    members: BTreeSet<String>,
    /// When its oldest current member appeared.
    created: i64,
    /// Its last notification, if any.
    last_flush: Option<i64>,
    /// When it next needs a look.
    due: i64,
    /// Its last look (in memory only), so muted alerts are looked at every group interval
    /// rather than continuously.
    looked: Option<i64>,
}

/// Whether a silence covers a finding (the policy's silences, evaluated by the caller).
pub trait Mute {
    /// The name of the silence covering `f` at `now`, if any.
    fn silenced(&self, f: &Finding, now: i64) -> Option<String>;
}

/// No silences.
pub struct NoMute;

impl Mute for NoMute {
    fn silenced(&self, _f: &Finding, _now: i64) -> Option<String> {
        None
    }
}

/// Alerts, groups and timers of the partitions this instance owns.
pub struct Engine {
    grouping: Grouping,
    alerts: HashMap<String, Entry>,
    groups: HashMap<String, Group>,
    /// (due, group) for every group, earliest first.
    schedule: BTreeSet<(i64, String)>,
    /// (cluster, subject) → fingerprints, for inhibition.
    by_subject: HashMap<(String, String), BTreeSet<String>>,
}

impl Engine {
    /// An empty engine.
    pub fn new(grouping: Grouping) -> Self {
        Engine {
            grouping,
            alerts: HashMap::new(),
            groups: HashMap::new(),
            schedule: BTreeSet::new(),
            by_subject: HashMap::new(),
        }
    }

    /// Alerts held (open episodes).
    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    /// Whether no alert is open.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    /// Groups held.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// The latest time any state mentions (to resume a findings-time clock after a restart).
    pub fn latest_time(&self) -> Option<i64> {
        self.alerts
            .values()
            .map(|e| e.state.last_seen.max(e.state.last_notified))
            .max()
    }

    fn group_key(&self, f: &Finding) -> String {
        let mut key = String::new();
        for (i, l) in self.grouping.group_by.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(l.name());
            key.push('=');
            key.push_str(&l.value(f));
        }
        key
    }

    /// Adopts states read from the state topic (the latest per fingerprint); states of other
    /// partitions than `owned` (when given) are ignored. Unreadable states are skipped and
    /// counted in the result.
    pub fn restore(
        &mut self,
        states: impl IntoIterator<Item = DedupState>,
        owned: Option<&BTreeSet<i32>>,
    ) -> usize {
        let mut unreadable = 0;
        let mut touched = BTreeSet::new();
        for s in states {
            if let (Some(owned), Some(p)) = (owned, s.partition)
                && !owned.contains(&p)
            {
                continue;
            }
            let Some(finding) = s
                .latest_finding
                .as_deref()
                .and_then(|j| serde_json::from_str::<Finding>(j).ok())
            else {
                unreadable += 1;
                continue;
            };
            self.remove(&s.fingerprint);
            let group = self.group_key(&finding);
            touched.insert(group.clone());
            self.insert(Entry {
                state: s,
                finding,
                group,
            });
        }
        for g in touched {
            self.rebuild_group(&g);
        }
        unreadable
    }

    /// Forgets the alerts of `partitions` (revoked: their new owner restores them).
    pub fn drop_partitions(&mut self, partitions: &[i32]) {
        let gone: Vec<String> = self
            .alerts
            .values()
            .filter(|e| e.state.partition.is_some_and(|p| partitions.contains(&p)))
            .map(|e| e.state.fingerprint.clone())
            .collect();
        let mut touched = BTreeSet::new();
        for fp in gone {
            if let Some(e) = self.remove(&fp) {
                touched.insert(e.group);
            }
        }
        for g in touched {
            self.rebuild_group(&g);
        }
    }

    fn insert(&mut self, e: Entry) {
        let fp = e.state.fingerprint.clone();
        self.by_subject
            .entry((e.finding.cluster.clone(), e.finding.subject.to_string()))
            .or_default()
            .insert(fp.clone());
        self.groups
            .entry(e.group.clone())
            .or_insert_with(|| Group {
                members: BTreeSet::new(),
                created: e.state.first_seen,
                last_flush: None,
                due: i64::MAX,
                looked: None,
            })
            .members
            .insert(fp.clone());
        self.alerts.insert(fp, e);
    }

    fn remove(&mut self, fp: &str) -> Option<Entry> {
        let e = self.alerts.remove(fp)?;
        let subject = (e.finding.cluster.clone(), e.finding.subject.to_string());
        if let Some(set) = self.by_subject.get_mut(&subject) {
            set.remove(fp);
            if set.is_empty() {
                self.by_subject.remove(&subject);
            }
        }
        if let Some(g) = self.groups.get_mut(&e.group) {
            g.members.remove(fp);
        }
        Some(e)
    }

    /// Recomputes a group's created/last-flush from its members and reschedules it.
    fn rebuild_group(&mut self, key: &str) {
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        self.schedule.remove(&(g.due, key.to_string()));
        if g.members.is_empty() {
            self.groups.remove(key);
            return;
        }
        let members = g.members.iter().filter_map(|fp| self.alerts.get(fp));
        let mut created = i64::MAX;
        let mut last_flush = None::<i64>;
        for e in members {
            created = created.min(e.state.first_seen);
            if e.state.notified_status.is_some() {
                last_flush = Some(
                    last_flush.map_or(e.state.last_notified, |l| l.max(e.state.last_notified)),
                );
            }
        }
        g.created = created;
        g.last_flush = last_flush;
        let due = self.due_of(key);
        self.reschedule(key, due);
    }

    fn reschedule(&mut self, key: &str, due: i64) {
        if let Some(g) = self.groups.get_mut(key) {
            self.schedule.remove(&(g.due, key.to_string()));
            g.due = due;
            self.schedule.insert((due, key.to_string()));
        }
    }

    /// When a group next needs a look, from its members' states.
    fn due_of(&self, key: &str) -> i64 {
        let Some(g) = self.groups.get(key) else {
            return i64::MAX;
        };
        let t = &self.grouping;
        let changed_due = match g.last_flush {
            None => g.created + t.group_wait,
            Some(l) => l + t.group_interval,
        };
        let mut due = i64::MAX;
        for e in g.members.iter().filter_map(|fp| self.alerts.get(fp)) {
            let resolve_at = e.state.last_seen + t.resolve_timeout;
            if e.state.notified_status.as_deref() == Some(SHOWN) {
                due = due.min(resolve_at.max(changed_due));
                due = due.min(e.state.last_notified + t.repeat_interval);
            } else if e.state.notified_status.as_deref() == Some(MUTED) {
                // Muted: look again a group interval after the last look (or when it
                // resolves, to drop it).
                let again = g.looked.map_or(changed_due, |l| l + t.group_interval);
                due = due.min(again.max(changed_due).min(resolve_at.max(changed_due)));
            } else {
                // Waiting for its first notification, muted (to look again), or resolved
                // before ever being shown (to drop).
                due = due.min(changed_due);
            }
        }
        due
    }

    /// Folds a finding in at time `now`. `partition` is where it was read from.
    pub fn observe(&mut self, f: &Finding, partition: i32, now: i64) -> Observed {
        if let Some(e) = self.alerts.get_mut(&f.fingerprint) {
            if e.state.recent_finding_ids.contains(&f.id) {
                return Observed::Replay;
            }
            let s = &mut e.state;
            s.event_time = now;
            s.last_seen = s.last_seen.max(now);
            s.occurrences += 1;
            s.partition = Some(partition);
            s.recent_finding_ids.push(f.id.clone());
            let excess = s.recent_finding_ids.len().saturating_sub(RECENT_IDS);
            s.recent_finding_ids.drain(..excess);
            // Keep the loudest finding of the episode as the one shown.
            if f.severity >= e.finding.severity {
                e.finding = f.clone();
                s.latest_finding = serde_json::to_string(f).ok();
            }
            // A later resolution time can only move the group's look later: the scheduled
            // look finds nothing to do and reschedules, so nothing to recompute here.
            return Observed::Folded(s.clone());
        }
        let state = DedupState {
            cluster: f.cluster.clone(),
            event_time: now,
            fingerprint: f.fingerprint.clone(),
            alert_id: format!("{}-{}", f.fingerprint, now),
            first_seen: now,
            last_seen: now,
            last_notified: now,
            occurrences: 1,
            recent_finding_ids: vec![f.id.clone()],
            partition: Some(partition),
            notified_status: None,
            latest_finding: serde_json::to_string(f).ok(),
        };
        let group = self.group_key(f);
        let is_new_group = !self.groups.contains_key(&group);
        self.insert(Entry {
            state: state.clone(),
            finding: f.clone(),
            group: group.clone(),
        });
        let due = if is_new_group {
            now + self.grouping.group_wait
        } else {
            let g = &self.groups[&group];
            let pending = match g.last_flush {
                None => g.created + self.grouping.group_wait,
                Some(l) => l + self.grouping.group_interval,
            };
            g.due.min(pending.max(now))
        };
        self.reschedule(&group, due);
        Observed::New(state)
    }

    /// The earliest time a group needs a look, if any group is held.
    pub fn next_due(&self) -> Option<i64> {
        self.schedule.first().map(|(t, _)| *t)
    }

    /// Runs every timer due up to `now`, each at its own due time, in time order.
    pub fn advance(&mut self, now: i64, mute: &dyn Mute) -> (Vec<Flush>, Vec<StateWrite>) {
        let mut flushes = Vec::new();
        let mut writes = Vec::new();
        while let Some((due, key)) = self.schedule.first().cloned() {
            if due > now {
                break;
            }
            self.schedule.pop_first();
            if let Some(flush) = self.flush(&key, due, mute, &mut writes) {
                flushes.push(flush);
            }
        }
        (flushes, writes)
    }

    /// Whether a higher-severity alert fires on the same subject at `at`.
    fn inhibited(&self, e: &Entry, at: i64) -> bool {
        let subject = (e.finding.cluster.clone(), e.finding.subject.to_string());
        self.by_subject.get(&subject).is_some_and(|fps| {
            fps.iter().filter_map(|fp| self.alerts.get(fp)).any(|o| {
                o.finding.severity > e.finding.severity
                    && at < o.state.last_seen + self.grouping.resolve_timeout
            })
        })
    }

    fn flush(
        &mut self,
        key: &str,
        at: i64,
        mute: &dyn Mute,
        writes: &mut Vec<StateWrite>,
    ) -> Option<Flush> {
        let g = self.groups.get(key)?;
        let repeat_due = g
            .last_flush
            .is_some_and(|l| at >= l + self.grouping.repeat_interval);
        let members: Vec<String> = g.members.iter().cloned().collect();
        let mut shown = Vec::new();
        let mut emitted = false;
        let mut gone = Vec::new();
        for fp in &members {
            let Some(e) = self.alerts.get(fp) else {
                continue;
            };
            let resolved = at >= e.state.last_seen + self.grouping.resolve_timeout;
            let was_shown = e.state.notified_status.as_deref() == Some(SHOWN);
            if resolved {
                gone.push(fp.clone());
                writes.push(StateWrite::Delete(fp.clone()));
                if was_shown {
                    shown.push((alert_of(e, AlertStatus::Resolved, at), Change::Resolved));
                    emitted = true;
                }
                continue;
            }
            let muted = mute.silenced(&e.finding, at).is_some() || self.inhibited(e, at);
            let change = match (was_shown, muted) {
                (_, true) => None,
                (false, false) => Some(Change::New),
                (true, false) if repeat_due => Some(Change::Repeat),
                (true, false) => Some(Change::Unchanged),
            };
            let e = self.alerts.get_mut(fp)?;
            match change {
                None => {
                    if e.state.notified_status.as_deref() != Some(MUTED) {
                        e.state.notified_status = Some(MUTED.into());
                        e.state.event_time = at;
                        writes.push(StateWrite::Put(e.state.clone()));
                    }
                }
                Some(c) => {
                    if c != Change::Unchanged {
                        emitted = true;
                        e.state.notified_status = Some(SHOWN.into());
                        e.state.last_notified = at;
                        e.state.event_time = at;
                        writes.push(StateWrite::Put(e.state.clone()));
                    }
                    shown.push((alert_of(e, AlertStatus::Firing, at), c));
                }
            }
        }
        for fp in &gone {
            self.remove(fp);
        }
        if let Some(g) = self.groups.get_mut(key) {
            g.looked = Some(at);
            if emitted {
                g.last_flush = Some(at);
            }
        }
        if self.groups.get(key).is_some_and(|g| g.members.is_empty()) {
            self.groups.remove(key);
        } else {
            let due = self.due_of(key).max(at + 1);
            self.reschedule(key, due);
        }
        emitted.then(|| Flush {
            group: key.to_string(),
            at,
            alerts: shown,
        })
    }
}

/// The alert record for an entry as notified at `at`.
fn alert_of(e: &Entry, status: AlertStatus, at: i64) -> Alert {
    let f = &e.finding;
    let s = &e.state;
    Alert {
        cluster: f.cluster.clone(),
        event_time: at,
        id: s.alert_id.clone(),
        fingerprint: s.fingerprint.clone(),
        status,
        title: f.title.clone(),
        tactic: f.tactic,
        techniques: f.techniques.clone(),
        severity: f.severity,
        subject: f.subject.clone(),
        detector: f.detector,
        rule_id: f.rule_id.clone(),
        model_version: f.model_version.clone(),
        score: f.score,
        finding_ids: s.recent_finding_ids.clone(),
        occurrences: s.occurrences,
        first_seen: s.first_seen,
        last_seen: s.last_seen,
        evidence: f.evidence.clone(),
        implication: f.implication.clone(),
        remediation: f.remediation.clone(),
        prevention: f.prevention.clone(),
        references: f.references.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use korvid_schemas::*;

    pub(crate) fn finding(fp: &str, id: &str, sev: Severity, subject: &str) -> Finding {
        Finding {
            cluster: "prod".into(),
            event_time: 0,
            id: id.into(),
            fingerprint: fp.into(),
            window_id: "w".into(),
            detected_at: 0,
            detector: Detector::Rule,
            rule_id: Some(format!("KOR-{fp}")),
            model_version: None,
            score: 1.0,
            title: format!("rule {fp}"),
            tactic: Tactic::Execution,
            techniques: vec!["T1609".into()],
            severity: sev,
            subject: Subject {
                kind: "Pod".into(),
                namespace: Some("web".into()),
                name: subject.into(),
                uid: None,
            },
            evidence: vec![Evidence {
                name: "actor".into(),
                value: "alice".into(),
            }],
            implication: "i".into(),
            remediation: "r".into(),
            prevention: "p".into(),
            references: vec![],
        }
    }

    /// A firing alert for tests elsewhere in the crate.
    pub(crate) fn alert(fp: &str) -> Alert {
        let f = finding(fp, "id-1", Severity::High, "api");
        let mut engine = Engine::new(grouping(&[GroupLabel::Fingerprint]));
        engine.observe(&f, 0, 1_000);
        let (flushes, _) = engine.advance(1_000, &NoMute);
        flushes[0].alerts[0].0.clone()
    }

    pub(crate) fn grouping(by: &[GroupLabel]) -> Grouping {
        Grouping {
            group_by: by.to_vec(),
            group_wait: 0,
            group_interval: 60_000,
            repeat_interval: 3_600_000,
            resolve_timeout: 300_000,
        }
    }

    const S: i64 = 1_000;
    const M: i64 = 60 * S;

    fn changes(f: &Flush) -> Vec<(String, Change)> {
        f.alerts
            .iter()
            .map(|(a, c)| (a.fingerprint.clone(), *c))
            .collect()
    }

    #[test]
    fn a_group_waits_then_batches_changes_then_repeats_then_resolves() {
        let mut g = grouping(&[GroupLabel::Namespace]);
        g.group_wait = 30 * S;
        g.group_interval = 5 * M;
        g.repeat_interval = 20 * M;
        g.resolve_timeout = 5 * M;
        let mut e = Engine::new(g);
        let mut n = 0;
        let mut seen = |e: &mut Engine, fp: &str, t: i64| {
            n += 1;
            e.observe(&finding(fp, &format!("f{n}"), Severity::High, fp), 0, t)
        };
        seen(&mut e, "a", 0);
        seen(&mut e, "b", 10 * S);
        assert!(e.advance(29 * S, &NoMute).0.is_empty(), "group_wait holds");
        let (f, writes) = e.advance(30 * S, &NoMute);
        assert_eq!(f.len(), 1);
        assert_eq!(
            changes(&f[0]),
            vec![("a".into(), Change::New), ("b".into(), Change::New)]
        );
        assert_eq!(writes.len(), 2);
        // a keeps firing; c joins at 1 min: notified at the next group interval (5:30).
        for t in (1..=30).map(|m| m * M) {
            seen(&mut e, "a", t);
        }
        seen(&mut e, "c", M);
        assert!(e.advance(5 * M + 29 * S, &NoMute).0.is_empty());
        let (f, _) = e.advance(5 * M + 30 * S, &NoMute);
        assert_eq!(
            changes(&f[0]),
            vec![
                ("a".into(), Change::Unchanged),
                ("b".into(), Change::Resolved),
                ("c".into(), Change::New)
            ],
            "b was quiet for 5 min by then"
        );
        // c goes quiet at 1 min: resolved at 6 min, notified at the group's next turn.
        let (f, _) = e.advance(10 * M + 30 * S, &NoMute);
        assert_eq!(
            changes(&f[0]),
            vec![
                ("a".into(), Change::Unchanged),
                ("c".into(), Change::Resolved)
            ]
        );
        // Then nothing changes until the repeat, 20 min after the last notification.
        assert!(e.advance(30 * M + 29 * S, &NoMute).0.is_empty());
        let (f, _) = e.advance(30 * M + 30 * S, &NoMute);
        assert_eq!(changes(&f[0]), vec![("a".into(), Change::Repeat)]);
        // a's last finding was at 30 min: resolved at 35:00, notified at the next turn, 35:30.
        let (f, _) = e.advance(40 * M, &NoMute);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].at, 35 * M + 30 * S);
        assert_eq!(changes(&f[0]), vec![("a".into(), Change::Resolved)]);
        assert!(e.is_empty() && e.groups() == 0);
    }

    #[test]
    fn replays_change_nothing_and_restore_resumes_the_same_timers() {
        let mut e = Engine::new(grouping(&[GroupLabel::Cluster]));
        let f = finding("a", "x", Severity::High, "api");
        let Observed::New(s) = e.observe(&f, 2, 0) else {
            panic!("new episode")
        };
        assert_eq!(s.partition, Some(2));
        assert_eq!(e.observe(&f, 2, 5), Observed::Replay);
        let (flushes, writes) = e.advance(0, &NoMute);
        assert_eq!(flushes.len(), 1);
        let StateWrite::Put(saved) = &writes[0] else {
            panic!("a put")
        };
        // A second instance restored from the state topic repeats nothing and resolves at the
        // same time as the first.
        let mut other = Engine::new(grouping(&[GroupLabel::Cluster]));
        assert_eq!(other.restore([saved.clone()], None), 0);
        assert_eq!(other.observe(&f, 2, 10), Observed::Replay);
        assert_eq!(other.next_due(), e.next_due());
        let (a, _) = e.advance(10 * M, &NoMute);
        let (b, _) = other.advance(10 * M, &NoMute);
        assert_eq!(a.len(), 1);
        assert_eq!(changes(&a[0]), changes(&b[0]));
        assert_eq!(a[0].at, b[0].at);
        // States of partitions it does not own are left alone.
        let mut third = Engine::new(grouping(&[GroupLabel::Cluster]));
        third.restore([saved.clone()], Some(&BTreeSet::from([0, 1])));
        assert!(third.is_empty());
    }

    #[test]
    fn higher_severity_on_a_subject_inhibits_lower_and_silences_mute() {
        let mut e = Engine::new(grouping(&[GroupLabel::Fingerprint]));
        e.observe(&finding("low", "1", Severity::Medium, "api"), 0, 0);
        e.observe(&finding("high", "2", Severity::Critical, "api"), 0, 0);
        e.observe(&finding("other", "3", Severity::Medium, "db"), 0, 0);
        struct SilenceDb;
        impl Mute for SilenceDb {
            fn silenced(&self, f: &Finding, now: i64) -> Option<String> {
                (f.subject.name == "db" && now < 2 * M).then(|| "maintenance".into())
            }
        }
        let (f, _) = e.advance(0, &SilenceDb);
        let sent: Vec<String> = f.iter().flat_map(changes).map(|(fp, _)| fp).collect();
        assert_eq!(sent, vec!["high".to_string()]);
        // The silence ends at 2 min: db's alert goes out at its group's next turn (1 min
        // interval after the muted look at 0 → first look at or after 2 min).
        let (f, _) = e.advance(3 * M, &SilenceDb);
        let sent: Vec<String> = f.iter().flat_map(changes).map(|(fp, _)| fp).collect();
        assert_eq!(sent, vec!["other".to_string()]);
    }
}
