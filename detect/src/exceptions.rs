//! Exceptions: findings a team has accepted, written down with an owner, a reason and an expiry.
//!
//! An exceptions file is YAML:
//!
//! ```yaml
//! exceptions:
//!   - name: opa-images-need-escalation
//!     rules: [KOR-0108, privilege_escalation]   # rule ids or tactics; empty or absent = all
//!     match:                                     # every key must match (any of its patterns)
//!       namespace: [gatekeeper-system]
//!       image: ["openpolicyagent/opa:*"]         # `*` matches any run of characters
//!       container_port: [{min: 8000, max: 9000}] # numbers: an inclusive range
//!     owner: platform-team
//!     reason: the webhook's init container must chown its volume
//!     expires: 2027-06-30                        # a date (end of that day, UTC) or RFC 3339
//! ```
//!
//! Match keys are the subject's fields (`cluster`, `kind`, `namespace`, `name`) or any evidence
//! column the rule returns (`image`, `host_path`, `container_port`, `actor`, ...); a key the
//! finding lacks does not match. An expired exception stops applying and is reported, so an
//! accepted risk comes back to its owner instead of being forgotten.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use korvid_schemas::Finding;
use serde::Deserialize;

/// A file of exceptions that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExceptionsError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid exceptions document.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where the parser knows it.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExceptionsFile {
    #[serde(default)]
    exceptions: Vec<ExceptionEntry>,
}

/// One exception as written in a file (also embedded in notify's policy file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionEntry {
    /// Short name.
    pub name: String,
    /// Rule ids or tactics; empty = all.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Field → patterns.
    #[serde(default, rename = "match")]
    pub matches: BTreeMap<String, Vec<PatternEntry>>,
    /// Who accepted the risk.
    pub owner: String,
    /// Why.
    pub reason: String,
    /// A date or RFC 3339 time.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A pattern as written: text (a glob), a number, or a `{min, max}` range.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PatternEntry {
    /// A glob.
    Text(String),
    /// An exact number.
    Number(i64),
    /// An inclusive range.
    Range {
        /// Lowest.
        min: Option<i64>,
        /// Highest.
        max: Option<i64>,
    },
}

impl From<PatternEntry> for Pattern {
    fn from(p: PatternEntry) -> Self {
        match p {
            PatternEntry::Text(s) => Pattern::Glob(s),
            PatternEntry::Number(n) => Pattern::Glob(n.to_string()),
            PatternEntry::Range { min, max } => Pattern::Range { min, max },
        }
    }
}

/// Compiles written patterns by field.
pub fn compile_matches(
    written: BTreeMap<String, Vec<PatternEntry>>,
) -> BTreeMap<String, Vec<Pattern>> {
    written
        .into_iter()
        .map(|(k, ps)| (k, ps.into_iter().map(Pattern::from).collect()))
        .collect()
}

/// Whether every field of `matches` has a value in `finding` that one of its patterns matches
/// (an empty map matches everything).
pub fn matches_all(matches: &BTreeMap<String, Vec<Pattern>>, finding: &Finding) -> bool {
    matches.iter().all(|(key, patterns)| {
        finding_field(finding, key).is_some_and(|v| patterns.iter().any(|p| p.matches(&v)))
    })
}

/// A value pattern: a glob over text, or an inclusive numeric range.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// `*` matches any run of characters; everything else literally.
    Glob(String),
    /// Numbers from `min` to `max`, both inclusive; an open end is unbounded.
    Range {
        /// Lowest accepted value.
        min: Option<i64>,
        /// Highest accepted value.
        max: Option<i64>,
    },
}

impl Pattern {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Glob(g) => glob_match(g, value),
            Pattern::Range { min, max } => value
                .trim()
                .parse::<i64>()
                .is_ok_and(|v| min.is_none_or(|lo| v >= lo) && max.is_none_or(|hi| v <= hi)),
        }
    }
}

/// `*` matches any run of characters (including none); no other character is special.
fn glob_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// One accepted risk.
#[derive(Debug, Clone)]
pub struct Exception {
    /// Short name, reported with what it excepted.
    pub name: String,
    /// Rule ids or tactics it applies to; empty = every rule.
    pub rules: Vec<String>,
    /// Subject fields or evidence columns, each with the patterns any of which must match.
    pub matches: BTreeMap<String, Vec<Pattern>>,
    /// Who accepted it.
    pub owner: String,
    /// Why.
    pub reason: String,
    /// When it stops applying (Unix milliseconds), if ever.
    pub expires_ms: Option<i64>,
}

impl Exception {
    /// Whether it excepts `finding`, ignoring expiry.
    pub fn covers(&self, finding: &Finding) -> bool {
        let rule_ok = self.rules.is_empty()
            || self.rules.iter().any(|r| {
                finding.rule_id.as_deref() == Some(r.as_str()) || finding.tactic.as_str() == r
            });
        rule_ok && matches_all(&self.matches, finding)
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

/// The value of a match key in a finding: the subject's fields (`cluster`, `kind`,
/// `namespace`, `name`, `subject` as `Kind/ns/name`), `rule`, `tactic`, `severity`, `user`
/// (the `actor` or `user` evidence), `label.KEY` (the subject's Kubernetes label KEY, from the
/// `labels` evidence detect attaches), or any evidence column (`image`, `host_path`, ...).
pub fn finding_field<'a>(finding: &'a Finding, key: &str) -> Option<Cow<'a, str>> {
    let evidence = |name: &str| {
        finding
            .evidence
            .iter()
            .find(|e| e.name == name)
            .map(|e| Cow::Borrowed(e.value.as_str()))
    };
    match key {
        "cluster" => Some(Cow::Borrowed(&finding.cluster)),
        "kind" => Some(Cow::Borrowed(&finding.subject.kind)),
        "namespace" => finding.subject.namespace.as_deref().map(Cow::Borrowed),
        "name" => Some(Cow::Borrowed(&finding.subject.name)),
        "subject" => Some(Cow::Owned(finding.subject.to_string())),
        "rule" => finding
            .rule_id
            .as_deref()
            .or(finding.model_version.as_deref())
            .map(Cow::Borrowed),
        "tactic" => Some(Cow::Borrowed(finding.tactic.as_str())),
        "severity" => Some(Cow::Borrowed(finding.severity.as_str())),
        "user" => evidence("actor").or_else(|| evidence("user")),
        _ => match key.strip_prefix("label.") {
            Some(label) => finding
                .evidence
                .iter()
                .find(|e| e.name == "labels")
                .and_then(|e| label_value(&e.value, label))
                .map(Cow::Borrowed),
            None => evidence(key),
        },
    }
}

/// The value of label `key` in a `labels` text (`k=v` pairs, comma-joined).
fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The exceptions in force, and what they did.
#[derive(Debug, Clone, Default)]
pub struct Exceptions {
    list: Vec<Exception>,
}

impl Exceptions {
    /// Reads an exceptions file.
    pub fn load(path: &Path) -> Result<Self, ExceptionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExceptionsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ExceptionsError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses an exceptions document; the error names the line where it can.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ExceptionsFile = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(l) => format!("line {}: {e}", l.line()),
            None => e.to_string(),
        })?;
        Self::from_entries(file.exceptions)
    }

    /// Checks and compiles written exceptions; the error names the entry.
    pub fn from_entries(entries: Vec<ExceptionEntry>) -> Result<Self, String> {
        let mut list = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let at = format!("exceptions[{i}] ({})", e.name);
            if e.owner.trim().is_empty() || e.reason.trim().is_empty() {
                return Err(format!("{at}: an exception needs an owner and a reason"));
            }
            if e.matches.values().any(Vec::is_empty) {
                return Err(format!(
                    "{at}: a match key with no patterns matches nothing"
                ));
            }
            let expires_ms = e
                .expires
                .as_deref()
                .map(|t| {
                    parse_expiry(t).ok_or_else(|| {
                        format!("{at}: expires `{t}` is neither a date (2027-06-30) nor RFC 3339")
                    })
                })
                .transpose()?;
            let matches = compile_matches(e.matches);
            list.push(Exception {
                name: e.name,
                rules: e.rules,
                matches,
                owner: e.owner,
                reason: e.reason,
                expires_ms,
            });
        }
        Ok(Exceptions { list })
    }

    /// No exceptions at all.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every exception, expired or not.
    pub fn all(&self) -> &[Exception] {
        &self.list
    }

    /// The exceptions that have expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> impl Iterator<Item = &Exception> {
        self.list.iter().filter(move |e| e.expired(now_ms))
    }

    /// The exception in force at `now_ms` that covers `finding`, if any.
    pub fn covering(&self, finding: &Finding, now_ms: i64) -> Option<&Exception> {
        self.list
            .iter()
            .find(|e| !e.expired(now_ms) && e.covers(finding))
    }

    /// Removes the findings an exception in force covers; returns how many each one removed
    /// (by exception name).
    pub fn apply(&self, findings: &mut Vec<Finding>, now_ms: i64) -> BTreeMap<String, usize> {
        let mut removed = BTreeMap::new();
        if self.list.is_empty() {
            return removed;
        }
        findings.retain(|f| match self.covering(f, now_ms) {
            Some(e) => {
                *removed.entry(e.name.clone()).or_default() += 1;
                false
            }
            None => true,
        });
        removed
    }
}

/// A date (the whole day, UTC) or an RFC 3339 time, as Unix milliseconds.
pub fn parse_expiry(t: &str) -> Option<i64> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(at.timestamp_millis());
    }
    let day = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").ok()?;
    // The whole named day is included.
    let next = day.succ_opt()?.and_hms_opt(0, 0, 0)?;
    Some(next.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use korvid_schemas::{Detector, Evidence, Severity, Subject, Tactic};

    fn finding(rule: &str, evidence: &[(&str, &str)]) -> Finding {
        Finding {
            cluster: "prod".into(),
            event_time: 0,
            id: "x".into(),
            fingerprint: "f".into(),
            window_id: "w".into(),
            detected_at: 0,
            detector: Detector::Rule,
            rule_id: Some(rule.into()),
            model_version: None,
            score: 1.0,
            title: "t".into(),
            tactic: Tactic::PrivilegeEscalation,
            techniques: vec![],
            severity: Severity::High,
            subject: Subject {
                kind: "Pod".into(),
                namespace: Some("web".into()),
                name: "api-7f".into(),
                uid: None,
            },
            evidence: evidence
                .iter()
                .map(|(n, v)| Evidence {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            implication: String::new(),
            remediation: String::new(),
            prevention: String::new(),
            references: vec![],
        }
    }

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(glob_match("nginx", "nginx"));
        assert!(!glob_match("nginx", "nginx:1"));
        assert!(glob_match("openpolicyagent/*", "openpolicyagent/opa:1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*/opa:*", "docker.io/x/opa:1"));
        assert!(glob_match("a*b*c", "abbbc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    const DOC: &str = r#"
exceptions:
  - name: opa
    rules: [KOR-0108]
    match:
      namespace: [web]
      image: ["openpolicyagent/*"]
    owner: platform
    reason: init container chowns its volume
    expires: 2027-06-30
  - name: ports
    rules: [privilege_escalation]
    match:
      container_port: [{min: 8000, max: 9000}, 443]
    owner: platform
    reason: ingress
"#;

    #[test]
    fn exceptions_match_rule_subject_and_evidence() {
        let ex = Exceptions::parse(DOC).expect("parses");
        let now = parse_expiry("2027-01-01").expect("date");
        let opa = finding("KOR-0108", &[("image", "openpolicyagent/opa:0.9")]);
        assert_eq!(ex.covering(&opa, now).map(|e| e.name.as_str()), Some("opa"));
        let other_image = finding("KOR-0108", &[("image", "nginx")]);
        assert!(ex.covering(&other_image, now).is_none());
        let no_image = finding("KOR-0108", &[]);
        assert!(
            ex.covering(&no_image, now).is_none(),
            "a missing key does not match"
        );
        let port = finding("KOR-0109", &[("container_port", "8080")]);
        assert_eq!(
            ex.covering(&port, now).map(|e| e.name.as_str()),
            Some("ports")
        );
        let exact = finding("KOR-0109", &[("container_port", "443")]);
        assert!(ex.covering(&exact, now).is_some());
        let outside = finding("KOR-0109", &[("container_port", "9001")]);
        assert!(ex.covering(&outside, now).is_none());

        let mut all = vec![opa.clone(), other_image, port];
        let removed = ex.apply(&mut all, now);
        assert_eq!(all.len(), 1);
        assert_eq!(removed.get("opa"), Some(&1));
        assert_eq!(removed.get("ports"), Some(&1));
    }

    #[test]
    fn labels_match_by_key() {
        let ex = Exceptions::parse(
            "exceptions:\n  - name: team\n    match:\n      label.app.kubernetes.io/part-of: [\"shop-*\"]\n    owner: o\n    reason: r\n",
        )
        .expect("parses");
        let labelled = |labels: &str| finding("KOR-0001", &[("labels", labels)]);
        assert!(
            ex.covering(&labelled("app.kubernetes.io/part-of=shop-api,tier=web"), 0)
                .is_some()
        );
        assert!(
            ex.covering(&labelled("tier=web,app.kubernetes.io/part-of=shop-db"), 0)
                .is_some()
        );
        assert!(
            ex.covering(&labelled("app.kubernetes.io/part-of=billing"), 0)
                .is_none()
        );
        assert!(ex.covering(&labelled("part-of=shop-api"), 0).is_none());
        assert!(
            ex.covering(&finding("KOR-0001", &[]), 0).is_none(),
            "no labels, no match"
        );
    }

    #[test]
    fn expired_exceptions_stop_applying_and_are_reported() {
        let ex = Exceptions::parse(DOC).expect("parses");
        let opa = finding("KOR-0108", &[("image", "openpolicyagent/opa:0.9")]);
        let last_day = parse_expiry("2027-06-30T23:59:00Z").expect("time");
        assert!(
            ex.covering(&opa, last_day).is_some(),
            "the named day is included"
        );
        let after = parse_expiry("2027-07-01").expect("date");
        assert!(ex.covering(&opa, after).is_none());
        let expired: Vec<_> = ex.expired(after).map(|e| e.name.as_str()).collect();
        assert_eq!(expired, ["opa"]);
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let e =
            Exceptions::parse("exceptions:\n  - name: x\n    owner: me\n").expect_err("no reason");
        assert!(e.contains("line 2"), "{e}");
        let e =
            Exceptions::parse("exceptions:\n  - {name: x, owner: me, reason: r, expires: soon}\n")
                .expect_err("bad date");
        assert!(e.contains("expires `soon`"), "{e}");
        let e = Exceptions::parse("exceptions:\n  - {name: x, owner: ' ', reason: r}\n")
            .expect_err("blank owner");
        assert!(e.contains("owner and a reason"), "{e}");
    }
}
