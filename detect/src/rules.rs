//! The rule catalog: YAML files with an id, a tactic, MITRE techniques, a severity, a DataFusion
//! SQL query over the window tables, and the explanation every finding carries.
//!
//! A query returns one row per finding: `subject_kind` and `subject_name` (required),
//! `subject_namespace` and `subject_uid` (optional), and `severity` (optional: `low` ..
//! `critical`, or null for the rule's own), with which a row whose context explains it lowers
//! (or raises) its hit, naming why in an evidence column; every other column becomes evidence.

use std::path::{Path, PathBuf};

use korvid_schemas::{Severity, Tactic};
use serde::Deserialize;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));
}

/// One detection rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `KOR-0001`.
    pub id: String,
    /// One-line title.
    pub title: String,
    /// Threat-matrix tactic.
    pub tactic: Tactic,
    /// MITRE ATT&CK technique ids.
    pub techniques: Vec<String>,
    /// Severity of a hit (a row's `severity` column overrides it).
    pub severity: Severity,
    /// SQL over `nodes`, `edges`, `activity`.
    pub query: String,
    /// Why it matters.
    pub implication: String,
    /// How to fix it.
    pub remediation: String,
    /// How to prevent it.
    pub prevention: String,
    /// Further reading.
    pub references: Vec<String>,
    /// Embedded scenarios the rule must fire on (`positive`) and stay quiet on (`negative`).
    pub examples: Examples,
    /// Where it was loaded from.
    pub source: String,
}

/// A rule's embedded examples (`korvid rules test` runs them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    /// Scenarios the rule must find.
    #[serde(default)]
    pub positive: Vec<Example>,
    /// Scenarios the rule must not find.
    #[serde(default)]
    pub negative: Vec<Example>,
}

/// One scenario: objects in the cluster and audited requests, as compact YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// What the scenario is.
    pub name: String,
    /// Kubernetes objects (manifests; namespace defaults to `default`).
    #[serde(default)]
    pub objects: Vec<serde_json::Value>,
    /// Audited requests, in order.
    #[serde(default)]
    pub audit: Vec<AuditExample>,
    /// The severity a positive example's findings must have (default: the rule's).
    #[serde(default)]
    pub severity: Option<String>,
}

/// One audited request, with what detection reads and sensible defaults for the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditExample {
    /// `user.username` (a service account as `system:serviceaccount:ns:name`).
    pub user: String,
    /// `user.groups`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `verb`.
    pub verb: String,
    /// `objectRef.apiGroup` (empty for core).
    #[serde(default)]
    pub api_group: Option<String>,
    /// `objectRef.resource`.
    #[serde(default)]
    pub resource: Option<String>,
    /// `objectRef.subresource`.
    #[serde(default)]
    pub subresource: Option<String>,
    /// `objectRef.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `objectRef.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `responseStatus.code` (default 200).
    #[serde(default)]
    pub code: Option<i32>,
    /// `requestObject`.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// `sourceIPs`.
    #[serde(default)]
    pub source_ips: Vec<String>,
    /// `userAgent`.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// How many times the request is repeated (default 1).
    #[serde(default)]
    pub repeat: Option<u32>,
    /// `requestURI` (default: built from the object reference).
    #[serde(default)]
    pub uri: Option<String>,
    /// `impersonatedUser.username`, when the request impersonated someone.
    #[serde(default)]
    pub impersonate: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    title: String,
    tactic: String,
    #[serde(default)]
    techniques: Vec<String>,
    severity: String,
    query: String,
    implication: String,
    remediation: String,
    prevention: String,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    examples: Examples,
}

/// A rule file that could not be loaded; the other rules still load.
#[derive(Debug, thiserror::Error)]
#[error("{file}: rule {rule}: {reason}")]
pub struct RuleLoadError {
    /// File path or built-in name.
    pub file: String,
    /// Rule id, or `?` when the file did not say.
    pub rule: String,
    /// What is wrong (YAML, field, or SQL error).
    pub reason: String,
}

/// Every loaded rule, plus what failed to load.
#[derive(Debug, Default)]
pub struct RuleCatalog {
    /// Valid rules, in id order.
    pub rules: Vec<Rule>,
    /// Files or rules that were refused.
    pub errors: Vec<RuleLoadError>,
}

impl RuleCatalog {
    /// Loads the built-in rules (if asked) and every `*.yaml` in `dirs`; later ids replace
    /// earlier ones; `disabled` ids are dropped.
    pub fn load(builtin_rules: bool, dirs: &[PathBuf], disabled: &[String]) -> Self {
        let mut catalog = RuleCatalog::default();
        if builtin_rules {
            for (name, text) in builtin::BUILTIN_RULES {
                catalog.add(&format!("builtin:{name}"), text);
            }
        }
        for dir in dirs {
            catalog.add_dir(dir);
        }
        catalog.rules.retain(|r| !disabled.contains(&r.id));
        catalog.rules.sort_by(|a, b| a.id.cmp(&b.id));
        catalog
    }

    fn add_dir(&mut self, dir: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.errors.push(RuleLoadError {
                    file: dir.display().to_string(),
                    rule: "?".into(),
                    reason: format!("cannot read directory: {e}"),
                });
                return;
            }
        };
        let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")));
        files.sort();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => self.add(&f.display().to_string(), &text),
                Err(e) => self.errors.push(RuleLoadError {
                    file: f.display().to_string(),
                    rule: "?".into(),
                    reason: e.to_string(),
                }),
            }
        }
    }

    /// Parses one rule file and adds it (replacing a rule with the same id).
    pub fn add(&mut self, source: &str, text: &str) {
        match parse_rule(source, text) {
            Ok(rule) => {
                self.rules.retain(|r| r.id != rule.id);
                self.rules.push(rule);
            }
            Err(e) => self.errors.push(e),
        }
    }
}

fn parse_rule(source: &str, text: &str) -> Result<Rule, RuleLoadError> {
    let guessed_id = text
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let fail = |reason: String| RuleLoadError {
        file: source.to_string(),
        rule: guessed_id.clone(),
        reason,
    };
    let f: RuleFile = serde_yaml::from_str(text).map_err(|e| fail(e.to_string()))?;
    if !f.id.starts_with("KOR-") && !f.id.contains('-') {
        return Err(fail(format!(
            "id `{}` should look like KOR-0001 (or PREFIX-NNNN for your own rules)",
            f.id
        )));
    }
    let tactic = Tactic::parse(&f.tactic).ok_or_else(|| {
        fail(format!(
            "unknown tactic `{}`; one of: {}",
            f.tactic,
            Tactic::ALL.map(|t| t.as_str()).join(", ")
        ))
    })?;
    let severity = Severity::parse(&f.severity).ok_or_else(|| {
        fail(format!(
            "unknown severity `{}`; one of: low, medium, high, critical",
            f.severity
        ))
    })?;
    for (field, value) in [
        ("title", &f.title),
        ("query", &f.query),
        ("implication", &f.implication),
        ("remediation", &f.remediation),
        ("prevention", &f.prevention),
    ] {
        if value.trim().is_empty() {
            return Err(fail(format!("`{field}` is empty")));
        }
    }
    for t in &f.techniques {
        let ok = t.starts_with('T')
            && t[1..]
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(fail(format!(
                "`{t}` is not a MITRE ATT&CK technique id (T1234 or T1234.001)"
            )));
        }
    }
    Ok(Rule {
        id: f.id,
        title: f.title.trim().to_string(),
        tactic,
        techniques: f.techniques,
        severity,
        query: f.query,
        implication: squash(&f.implication),
        remediation: squash(&f.remediation),
        prevention: squash(&f.prevention),
        references: f.references,
        examples: f.examples,
        source: source.to_string(),
    })
}

/// Folds YAML block text into one paragraph.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_loads_cleanly() {
        let c = RuleCatalog::load(true, &[], &[]);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.rules.len() >= 4);
        let exec = c
            .rules
            .iter()
            .find(|r| r.id == "KOR-0001")
            .expect("exec rule");
        assert_eq!(exec.tactic, Tactic::Execution);
        assert!(exec.remediation.contains("revoke"));
    }

    #[test]
    fn broken_files_are_reported_and_do_not_stop_others() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.yaml"), "id: X-1\ntitle: t\ntactic: sideways\nseverity: low\nquery: SELECT 1\nimplication: i\nremediation: r\nprevention: p\n").expect("write");
        std::fs::write(dir.path().join("b.yaml"), "id: X-2\n  : : bad yaml").expect("write");
        std::fs::write(dir.path().join("c.yaml"), "id: KOR-0001\ntitle: Mine\ntactic: execution\nseverity: low\nquery: SELECT 1\nimplication: i\nremediation: r\nprevention: p\n").expect("write");
        let c = RuleCatalog::load(true, &[dir.path().to_path_buf()], &["KOR-0004".into()]);
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
        assert!(c.errors[0].to_string().contains("sideways"));
        assert!(c.errors[0].to_string().contains("a.yaml"));
        assert_eq!(c.errors[1].rule, "X-2");
        let mine = c
            .rules
            .iter()
            .find(|r| r.id == "KOR-0001")
            .expect("replaced");
        assert_eq!(mine.title, "Mine");
        assert!(c.rules.iter().all(|r| r.id != "KOR-0004"));
    }
}
