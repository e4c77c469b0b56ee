//! The security policy file: what to except, what to silence, and where alerts go.
//!
//! ```yaml
//! exceptions:              # accepted risks: covered findings never become alerts
//!   - name: ci-runner-exec
//!     rules: [KOR-0003, execution]        # rule ids or tactics; absent = all
//!     match: {namespace: [ci], user: ["system:serviceaccount:ci:*"]}
//!     owner: platform-team
//!     reason: the CI runner execs into its build pods
//!     expires: 2027-03-31
//! silences:                # temporary mutes: alerts stay open but are not sent
//!   - name: db-maintenance
//!     match: {cluster: [prod], namespace: [db]}
//!     owner: dba-team
//!     reason: failover drill
//!     starts: 2026-12-01T22:00:00Z        # optional; default: now
//!     expires: 2026-12-02T02:00:00Z       # required
//! route:                   # the routing tree
//!   sinks: [stdout, alerts]               # the root's sinks: where nothing more specific goes
//!   min_severity: medium
//!   routes:
//!     - name: page-on-credentials
//!       match: {tactic: [credential_access, privilege_escalation], cluster: ["prod-*"]}
//!       min_severity: high
//!       sinks: [pagerduty]
//!       continue: true                    # also try the next sibling
//!     - match: {namespace: ["team-a-*"]}
//!       sinks: [team-a-slack]
//!     - match: {label.team: [payments]}   # the subject's Kubernetes labels
//!       sinks: [payments-pager]
//! ```
//!
//! Match keys (every key must match, any of its patterns; `*` globs): `cluster`, `namespace`,
//! `kind`, `name`, `subject`, `rule`, `tactic`, `severity`, `user`, `image`, `label.KEY` (the
//! subject's Kubernetes label, which detect attaches as the `labels` evidence), or any evidence
//! column. A route takes an alert when its match and `min_severity` hold; its first matching
//! child (and following children while `continue` is set) decide further, and a route whose
//! children all pass sends to its own sinks. Exceptions and silences name an owner, a reason
//! and an expiry; once expired they stop applying and are reported.
//!
//! Everything is checked when notify starts; an error names the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use korvid_detect::exceptions::{Pattern, compile_matches, matches_all, parse_expiry};
use korvid_detect::{ExceptionEntry, Exceptions, PatternEntry};
use korvid_schemas::{Alert, Finding, Severity};
use serde::Deserialize;

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PolicyError {
    /// The file.
    pub path: String,
    /// What is wrong, with its line.
    pub reason: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    exceptions: Vec<ExceptionEntry>,
    #[serde(default)]
    silences: Vec<SilenceEntry>,
    #[serde(default)]
    route: Option<RouteEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceEntry {
    name: String,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default, rename = "match")]
    matches: BTreeMap<String, Vec<PatternEntry>>,
    owner: String,
    reason: String,
    #[serde(default)]
    starts: Option<String>,
    expires: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: BTreeMap<String, Vec<PatternEntry>>,
    #[serde(default)]
    min_severity: Option<String>,
    #[serde(default)]
    sinks: Vec<String>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    #[serde(default)]
    routes: Vec<RouteEntry>,
}

/// A temporary mute.
#[derive(Debug, Clone)]
pub struct Silence {
    /// Name, reported when it mutes or expires.
    pub name: String,
    /// Rule ids or tactics; empty = all.
    pub rules: Vec<String>,
    /// Field patterns.
    pub matches: BTreeMap<String, Vec<Pattern>>,
    /// Who set it.
    pub owner: String,
    /// Why.
    pub reason: String,
    /// From when (ms).
    pub starts_ms: i64,
    /// Until when (ms).
    pub expires_ms: i64,
}

impl Silence {
    /// Whether it mutes `f` at `now`.
    pub fn mutes(&self, f: &Finding, now: i64) -> bool {
        now >= self.starts_ms
            && now < self.expires_ms
            && rules_match(&self.rules, f)
            && matches_all(&self.matches, f)
    }
}

fn rules_match(rules: &[String], f: &Finding) -> bool {
    rules.is_empty()
        || rules
            .iter()
            .any(|r| f.rule_id.as_deref() == Some(r.as_str()) || f.tactic.as_str() == r)
}

/// One node of the routing tree.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs (defaults to its position, `route.routes[1]`).
    pub name: String,
    /// Field patterns.
    pub matches: BTreeMap<String, Vec<Pattern>>,
    /// Alerts below this severity pass this route by.
    pub min_severity: Severity,
    /// Where the alerts it keeps go.
    pub sinks: Vec<String>,
    /// After matching, try the next sibling too.
    pub continue_: bool,
    /// More specific routes.
    pub routes: Vec<Route>,
}

impl Route {
    fn takes(&self, f: &Finding) -> bool {
        f.severity >= self.min_severity && matches_all(&self.matches, f)
    }

    /// Adds the sinks for `f` below (and at) this route; false when none of the subtree took it.
    fn collect(&self, f: &Finding, out: &mut BTreeSet<String>) -> bool {
        if !self.takes(f) {
            return false;
        }
        let mut child_took = false;
        for r in &self.routes {
            if r.collect(f, out) {
                child_took = true;
                if !r.continue_ {
                    break;
                }
            }
        }
        if !child_took {
            out.extend(self.sinks.iter().cloned());
        }
        true
    }

    fn walk<'a>(&'a self, out: &mut Vec<&'a Route>) {
        out.push(self);
        for r in &self.routes {
            r.walk(out);
        }
    }
}

/// The checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Accepted risks.
    pub exceptions: Exceptions,
    /// Temporary mutes.
    pub silences: Vec<Silence>,
    /// The routing tree.
    pub route: Route,
}

impl Policy {
    /// The policy without a file: every alert at or above `min_severity` to every sink.
    pub fn default_for(sinks: &[String], min_severity: Severity) -> Self {
        Policy {
            exceptions: Exceptions::default(),
            silences: Vec::new(),
            route: Route {
                name: "route".into(),
                matches: BTreeMap::new(),
                min_severity,
                sinks: sinks.to_vec(),
                continue_: false,
                routes: Vec::new(),
            },
        }
    }

    /// Reads and checks a policy file against the configured sink names.
    pub fn load(
        path: &Path,
        sinks: &[String],
        min_severity: Severity,
        now_ms: i64,
    ) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, sinks, min_severity, now_ms).map_err(|reason| PolicyError {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses and checks a policy document.
    pub fn parse(
        text: &str,
        sinks: &[String],
        min_severity: Severity,
        now_ms: i64,
    ) -> Result<Self, String> {
        let file: PolicyFile = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(l) => format!("line {}: {e}", l.line()),
            None => e.to_string(),
        })?;
        let line_of = |name: &str| locate(text, name);
        let mut exception_lines = Vec::new();
        for e in &file.exceptions {
            exception_lines.push(line_of(&e.name));
        }
        let exceptions = Exceptions::from_entries(file.exceptions).map_err(|reason| {
            // "exceptions[i] (name): ..." → prefix with the entry's line.
            let line = reason
                .strip_prefix("exceptions[")
                .and_then(|r| r.split(']').next())
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| exception_lines.get(i).copied().flatten());
            match line {
                Some(l) => format!("line {l}: {reason}"),
                None => reason,
            }
        })?;
        let mut silences = Vec::new();
        let mut names = BTreeSet::new();
        for s in file.silences {
            let at = match line_of(&s.name) {
                Some(l) => format!("line {l}: silence `{}`", s.name),
                None => format!("silence `{}`", s.name),
            };
            if !names.insert(s.name.clone()) {
                return Err(format!("{at}: another silence has this name"));
            }
            if s.owner.trim().is_empty() || s.reason.trim().is_empty() {
                return Err(format!("{at}: a silence needs an owner and a reason"));
            }
            if s.matches.is_empty() && s.rules.is_empty() {
                return Err(format!(
                    "{at}: a silence needs `match` or `rules` (silencing everything is not a silence)"
                ));
            }
            let expires_ms = parse_expiry(&s.expires).ok_or_else(|| {
                format!(
                    "{at}: expires `{}` is neither a date nor RFC 3339",
                    s.expires
                )
            })?;
            let starts_ms = match &s.starts {
                Some(t) => parse_expiry(t)
                    .map(|end_of_day| {
                        // A bare date starts at the beginning of that day.
                        if t.len() == 10 {
                            end_of_day - 86_400_000
                        } else {
                            end_of_day
                        }
                    })
                    .ok_or_else(|| format!("{at}: starts `{t}` is neither a date nor RFC 3339"))?,
                None => now_ms.min(expires_ms),
            };
            if starts_ms > expires_ms {
                return Err(format!("{at}: starts after it expires"));
            }
            check_keys(&s.matches).map_err(|r| format!("{at}: {r}"))?;
            silences.push(Silence {
                name: s.name,
                rules: s.rules,
                matches: compile_matches(s.matches),
                owner: s.owner,
                reason: s.reason,
                starts_ms,
                expires_ms,
            });
        }
        let route = match file.route {
            None => Policy::default_for(sinks, min_severity).route,
            Some(r) => build_route(r, "route".into(), Some(min_severity), text)?,
        };
        let known: BTreeSet<&str> = sinks.iter().map(String::as_str).collect();
        let mut all = Vec::new();
        route.walk(&mut all);
        for r in all {
            for s in &r.sinks {
                if !known.contains(s.as_str()) {
                    let line = line_of_route(text, r);
                    return Err(format!(
                        "{line}{}: no sink is named `{s}` (configured: {})",
                        r.name,
                        sinks.join(", ")
                    ));
                }
            }
        }
        Ok(Policy {
            exceptions,
            silences,
            route,
        })
    }

    /// The sinks an alert for `f` goes to.
    pub fn sinks_for(&self, f: &Finding) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.route.collect(f, &mut out);
        out
    }

    /// The sinks a notified alert goes to.
    pub fn sinks_for_alert(&self, a: &Alert) -> BTreeSet<String> {
        self.sinks_for(&finding_view(a))
    }

    /// The silence muting `f` at `now`, if any.
    pub fn silence(&self, f: &Finding, now: i64) -> Option<&Silence> {
        self.silences.iter().find(|s| s.mutes(f, now))
    }

    /// Silences that have expired at `now`.
    pub fn expired_silences(&self, now: i64) -> impl Iterator<Item = &Silence> {
        self.silences.iter().filter(move |s| now >= s.expires_ms)
    }
}

impl crate::engine::Mute for Policy {
    fn silenced(&self, f: &Finding, now: i64) -> Option<String> {
        self.silence(f, now).map(|s| s.name.clone())
    }
}

/// The fields routes and silences match, from an alert.
fn finding_view(a: &Alert) -> Finding {
    Finding {
        cluster: a.cluster.clone(),
        event_time: a.event_time,
        id: a.id.clone(),
        fingerprint: a.fingerprint.clone(),
        window_id: String::new(),
        detected_at: a.event_time,
        detector: a.detector,
        rule_id: a.rule_id.clone(),
        model_version: a.model_version.clone(),
        score: a.score,
        title: a.title.clone(),
        tactic: a.tactic,
        techniques: a.techniques.clone(),
        severity: a.severity,
        subject: a.subject.clone(),
        evidence: a.evidence.clone(),
        implication: String::new(),
        remediation: String::new(),
        prevention: String::new(),
        references: Vec::new(),
    }
}

const KEYS_HINT: &str =
    "cluster, namespace, kind, name, subject, rule, tactic, severity, user, or an evidence column";

fn check_keys(m: &BTreeMap<String, Vec<PatternEntry>>) -> Result<(), String> {
    for (k, ps) in m {
        if k.trim().is_empty() {
            return Err(format!("an empty match key (keys: {KEYS_HINT})"));
        }
        if ps.is_empty() {
            return Err(format!(
                "match key `{k}` has no patterns and would match nothing"
            ));
        }
    }
    Ok(())
}

fn build_route(
    r: RouteEntry,
    default_name: String,
    inherited_min: Option<Severity>,
    text: &str,
) -> Result<Route, String> {
    let name = r.name.unwrap_or(default_name);
    let at = |msg: String| match locate(text, &name) {
        Some(l) => format!("line {l}: {name}: {msg}"),
        None => format!("{name}: {msg}"),
    };
    let min_severity = match &r.min_severity {
        Some(s) => Severity::parse(s).ok_or_else(|| {
            at(format!(
                "min_severity `{s}`: expected low, medium, high or critical"
            ))
        })?,
        None => inherited_min.unwrap_or(Severity::Low),
    };
    check_keys(&r.matches).map_err(at)?;
    if r.sinks.is_empty() && r.routes.is_empty() {
        return Err(at("a route needs `sinks` or `routes`".into()));
    }
    let mut routes = Vec::new();
    for (i, child) in r.routes.into_iter().enumerate() {
        routes.push(build_route(
            child,
            format!("{name}.routes[{i}]"),
            Some(min_severity),
            text,
        )?);
    }
    Ok(Route {
        name,
        matches: compile_matches(r.matches),
        min_severity,
        sinks: r.sinks,
        continue_: r.continue_,
        routes,
    })
}

fn line_of_route(text: &str, r: &Route) -> String {
    locate(text, &r.name)
        .map(|l| format!("line {l}: "))
        .unwrap_or_default()
}

/// The line (1-based) of `name: <name>` in `text`, quoted or not.
fn locate(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches("- ").trim();
            l.strip_prefix("name:")
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\''))
                == Some(name)
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::finding;

    const POLICY: &str = r#"
exceptions:
  - name: ci-exec
    rules: [execution]
    match: {namespace: [ci]}
    owner: platform
    reason: runners exec into build pods
    expires: 2027-03-31
silences:
  - name: db-drill
    match: {name: ["db-*"]}
    owner: dba
    reason: failover drill
    starts: 2026-12-01T22:00:00Z
    expires: 2026-12-02T02:00:00Z
route:
  sinks: [stdout]
  min_severity: medium
  routes:
    - name: pager
      match: {tactic: [execution], cluster: ["prod*"]}
      min_severity: critical
      sinks: [pagerduty]
      continue: true
    - name: web-team
      match: {namespace: [web]}
      sinks: [slack]
"#;

    fn sinks() -> Vec<String> {
        ["stdout", "pagerduty", "slack"].map(String::from).to_vec()
    }

    #[test]
    fn routes_pick_sinks_by_match_and_severity() {
        let p = Policy::parse(POLICY, &sinks(), Severity::Medium, 0).expect("valid");
        let crit = finding("a", "1", Severity::Critical, "api");
        assert_eq!(
            p.sinks_for(&crit),
            BTreeSet::from(["pagerduty".to_string(), "slack".to_string()]),
            "pager continues to web-team"
        );
        let high = finding("a", "1", Severity::High, "api");
        assert_eq!(p.sinks_for(&high), BTreeSet::from(["slack".to_string()]));
        let mut elsewhere = finding("a", "1", Severity::High, "api");
        elsewhere.subject.namespace = Some("batch".into());
        assert_eq!(
            p.sinks_for(&elsewhere),
            BTreeSet::from(["stdout".to_string()])
        );
        let low = finding("a", "1", Severity::Low, "api");
        assert!(p.sinks_for(&low).is_empty(), "below the root's minimum");
    }

    #[test]
    fn routes_and_silences_match_labels() {
        let text = r#"
silences:
  - name: canary
    match: {label.track: [canary]}
    owner: sre
    reason: canaries are noisy by design
    expires: 2999-01-01
route:
  sinks: [stdout]
  routes:
    - name: payments
      match: {label.team: [payments]}
      sinks: [pagerduty]
"#;
        let p = Policy::parse(text, &sinks(), Severity::Low, 0).expect("valid");
        let mut f = finding("a", "1", Severity::High, "api");
        f.evidence.push(korvid_schemas::Evidence {
            name: "labels".into(),
            value: "app=api,team=payments".into(),
        });
        assert_eq!(p.sinks_for(&f), BTreeSet::from(["pagerduty".to_string()]));
        assert!(p.silence(&f, 1).is_none());
        f.evidence.last_mut().expect("labels").value = "team=payments,track=canary".into();
        assert_eq!(p.silence(&f, 1).map(|s| s.name.as_str()), Some("canary"));
        f.evidence.pop();
        assert_eq!(p.sinks_for(&f), BTreeSet::from(["stdout".to_string()]));
    }

    #[test]
    fn silences_apply_between_start_and_expiry() {
        let p = Policy::parse(POLICY, &sinks(), Severity::Medium, 0).expect("valid");
        let db = finding("a", "1", Severity::High, "db-0");
        let during = parse_expiry("2026-12-01T23:00:00Z").expect("time");
        let after = parse_expiry("2026-12-02T03:00:00Z").expect("time");
        assert_eq!(
            p.silence(&db, during).map(|s| s.name.as_str()),
            Some("db-drill")
        );
        assert!(p.silence(&db, after).is_none());
        assert_eq!(p.expired_silences(after).count(), 1);
        assert!(
            p.silence(&finding("a", "1", Severity::High, "api"), during)
                .is_none()
        );
    }

    #[test]
    fn errors_name_the_line() {
        let bad_sink = POLICY.replace("sinks: [slack]", "sinks: [slak]");
        let e = Policy::parse(&bad_sink, &sinks(), Severity::Medium, 0).expect_err("unknown sink");
        assert!(
            e.starts_with("line 25: web-team: no sink is named `slak`"),
            "{e}"
        );
        let bad_sev = POLICY.replace("min_severity: critical", "min_severity: urgent");
        let e = Policy::parse(&bad_sev, &sinks(), Severity::Medium, 0).expect_err("bad severity");
        assert!(
            e.starts_with("line 20: pager: min_severity `urgent`"),
            "{e}"
        );
        let no_owner = POLICY.replace("owner: dba", "owner: ''");
        let e = Policy::parse(&no_owner, &sinks(), Severity::Medium, 0).expect_err("no owner");
        assert!(e.starts_with("line 10: silence `db-drill`"), "{e}");
        let no_reason = POLICY.replace("reason: runners exec into build pods", "reason: ' '");
        let e = Policy::parse(&no_reason, &sinks(), Severity::Medium, 0).expect_err("no reason");
        assert!(e.starts_with("line 3: exceptions[0]"), "{e}");
        let typo = POLICY.replace("continue: true", "contine: true");
        let e = Policy::parse(&typo, &sinks(), Severity::Medium, 0).expect_err("unknown field");
        assert!(e.starts_with("line "), "{e}");
    }
}
