//! `korvid rules list | test | lint`: the rule catalog as detection engineers work with it.
//!
//! `test` runs every rule's embedded examples through the same code the pipeline uses: the
//! examples' objects become ObjectChanges (ingest's sanitising included), their audited requests
//! AuditEvents, enrich's offline windows build the graph windows, and the rule engine evaluates
//! them. A positive example must give at least one finding of its rule, a negative none.

use std::collections::BTreeMap;

use anyhow::Context;
use korvid_detect::{AuditExample, Example, Rule, RuleCatalog, RuleEngine};
use korvid_ingest::sanitize::Sanitizer;
use korvid_schemas::{AuditEvent, ObjectOp, Severity};

use crate::settings::KorvidSettings;

/// Cluster name examples run in.
const CLUSTER: &str = "example";
/// Event time of an example's first request (2026-01-01T00:00:00Z).
const START_MS: i64 = 1_767_225_600_000;

/// The catalog the settings ask for.
pub fn catalog(settings: &KorvidSettings) -> RuleCatalog {
    let d = &settings.detect;
    RuleCatalog::load(d.builtin_rules, &d.rules_dirs, &d.disabled_rules)
}

/// `korvid rules list`: every rule, grouped by tactic.
pub fn list(settings: &KorvidSettings) -> bool {
    let catalog = catalog(settings);
    let mut by_tactic: BTreeMap<&str, Vec<&Rule>> = BTreeMap::new();
    for r in &catalog.rules {
        by_tactic.entry(r.tactic.as_str()).or_default().push(r);
    }
    for (tactic, rules) in by_tactic {
        println!("{tactic} ({})", rules.len());
        for r in rules {
            println!(
                "  {:<10} {:<9} {:<24} {}",
                r.id,
                format!("{:?}", r.severity).to_ascii_lowercase(),
                r.techniques.join(","),
                r.title
            );
        }
    }
    println!("{} rules", catalog.rules.len());
    for e in &catalog.errors {
        eprintln!("not loaded: {e}");
    }
    catalog.errors.is_empty()
}

/// `korvid rules lint`: rules that load, plan, explain themselves and carry examples.
pub async fn lint(settings: &KorvidSettings) -> anyhow::Result<bool> {
    let catalog = catalog(settings);
    let mut problems: Vec<String> = catalog.errors.iter().map(ToString::to_string).collect();
    for r in &catalog.rules {
        let mut say = |what: &str| problems.push(format!("{}: {} ({})", r.source, r.id, what));
        if r.techniques.is_empty() {
            say("no MITRE ATT&CK technique");
        }
        if r.references.is_empty() {
            say("no references");
        }
        if r.examples.positive.is_empty() {
            say("no positive example");
        }
        if r.examples.negative.is_empty() {
            say("no negative example");
        }
        for e in &r.examples.positive {
            if let Some(s) = e
                .severity
                .as_deref()
                .filter(|s| Severity::parse(s).is_none())
            {
                say(&format!("example {:?}: unknown severity `{s}`", e.name));
            }
        }
        for e in r.examples.negative.iter().filter(|e| e.severity.is_some()) {
            say(&format!(
                "negative example {:?} names a severity; it must have no finding at all",
                e.name
            ));
        }
    }
    let count = catalog.rules.len();
    let engine = RuleEngine::new(catalog)
        .await
        .context("planning the rules")?;
    problems.extend(engine.errors().iter().map(ToString::to_string));
    for p in &problems {
        println!("{p}");
    }
    println!("{count} rules, {} problems", problems.len());
    Ok(problems.is_empty())
}

/// `korvid rules test`: runs every rule's examples; prints one line per example.
pub async fn test(settings: &KorvidSettings) -> anyhow::Result<bool> {
    let catalog = catalog(settings);
    let rules: Vec<Rule> = catalog.rules.clone();
    let load_errors = catalog.errors.len();
    for e in &catalog.errors {
        println!("FAIL load {e}");
    }
    let engine = RuleEngine::new(catalog)
        .await
        .context("planning the rules")?;
    let (mut passed, mut failed) = (0, load_errors);
    for rule in &rules {
        let cases = rule
            .examples
            .positive
            .iter()
            .map(|e| (true, e))
            .chain(rule.examples.negative.iter().map(|e| (false, e)));
        for (positive, example) in cases {
            let severities = match findings_of(&engine, rule, example).await {
                Ok(s) => s,
                Err(e) => {
                    failed += 1;
                    println!("FAIL {} {:?}: {e:#}", rule.id, example.name);
                    continue;
                }
            };
            let hits = severities.len();
            let expected = expected_severity(rule, example);
            let wrong = severities.iter().filter(|s| **s != expected).count();
            let ok = if positive {
                hits > 0 && wrong == 0
            } else {
                hits == 0
            };
            let kind = if positive { "positive" } else { "negative" };
            if ok {
                passed += 1;
                println!("ok   {} {kind} {:?}", rule.id, example.name);
            } else if positive && hits > 0 {
                failed += 1;
                println!(
                    "FAIL {} {kind} {:?}: {wrong} of {hits} findings not at severity {}",
                    rule.id,
                    example.name,
                    expected.as_str()
                );
            } else {
                failed += 1;
                println!(
                    "FAIL {} {kind} {:?}: {hits} findings",
                    rule.id, example.name
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The severity an example's findings must have: its own `severity`, else the rule's (lint
/// has checked that it parses).
fn expected_severity(rule: &Rule, example: &Example) -> Severity {
    example
        .severity
        .as_deref()
        .and_then(Severity::parse)
        .unwrap_or(rule.severity)
}

/// The severities of `rule`'s findings in the windows built from `example`.
async fn findings_of(
    engine: &RuleEngine,
    rule: &Rule,
    example: &Example,
) -> anyhow::Result<Vec<Severity>> {
    let sanitizer = Sanitizer::new(b"korvid-rule-examples");
    let mut objects = Vec::new();
    let mut scans = Vec::new();
    for (i, o) in example.objects.iter().enumerate() {
        let mut o = o.clone();
        if o.get("kind").and_then(|k| k.as_str()) == Some("VulnerabilityReport") {
            // As the watcher does: a Trivy Operator report is an image scan, not an object.
            scans.push(
                korvid_ingest::scans::vulnerability_report(&o, CLUSTER, START_MS)
                    .with_context(|| format!("object {}", i + 1))?,
            );
            continue;
        }
        korvid_ingest::snapshot::default_namespace(&mut o);
        objects.push(
            korvid_ingest::objects::object_change(
                CLUSTER,
                ObjectOp::Snapshot,
                o,
                None,
                &sanitizer,
                START_MS,
            )
            .with_context(|| format!("object {}", i + 1))?,
        );
    }
    let mut events = Vec::new();
    for (i, a) in example.audit.iter().enumerate() {
        for n in 0..a.repeat.unwrap_or(1) {
            events.push(audit_event(a, i, n, &sanitizer));
        }
    }
    let out = korvid_enrich::offline::windows(&objects, scans, events, 2_000, 20_000).await?;
    let mut hits = Vec::new();
    for w in &out.windows {
        let eval = engine.evaluate(w, START_MS).await?;
        if let Some((_, err)) = eval.failed_rules.iter().find(|(id, _)| *id == rule.id) {
            anyhow::bail!("the query failed: {err}");
        }
        hits.extend(
            eval.findings
                .iter()
                .filter(|f| f.rule_id.as_deref() == Some(rule.id.as_str()))
                .map(|f| f.severity),
        );
    }
    Ok(hits)
}

fn audit_event(a: &AuditExample, index: usize, repeat: u32, sanitizer: &Sanitizer) -> AuditEvent {
    let ms = START_MS + index as i64 * 100 + i64::from(repeat);
    let path = match (&a.namespace, &a.resource, &a.name) {
        (Some(ns), Some(r), Some(n)) => format!("/api/v1/namespaces/{ns}/{r}/{n}"),
        (Some(ns), Some(r), None) => format!("/api/v1/namespaces/{ns}/{r}"),
        (None, Some(r), Some(n)) => format!("/api/v1/{r}/{n}"),
        (None, Some(r), None) => format!("/api/v1/{r}"),
        _ => "/".into(),
    };
    AuditEvent {
        cluster: CLUSTER.into(),
        event_time: ms * 1000,
        audit_id: format!("example-{index}-{repeat}"),
        stage: "ResponseComplete".into(),
        level: "RequestResponse".into(),
        verb: a.verb.clone(),
        request_uri: a.uri.clone().unwrap_or(path),
        user: a.user.clone(),
        groups: a.groups.clone(),
        impersonated_user: a.impersonate.clone(),
        source_ips: if a.source_ips.is_empty() {
            vec!["10.0.0.10".into()]
        } else {
            a.source_ips.clone()
        },
        user_agent: a
            .user_agent
            .clone()
            .or_else(|| Some("kubectl/v1.31.0".into())),
        api_group: a.api_group.clone().filter(|g| !g.is_empty()),
        api_version: Some("v1".into()),
        resource: a.resource.clone(),
        subresource: a.subresource.clone(),
        namespace: a.namespace.clone(),
        name: a.name.clone(),
        response_code: Some(a.code.unwrap_or(200)),
        annotations: Default::default(),
        request_object: a.body.clone().map(|b| {
            sanitizer
                .sanitize_object(a.resource.as_deref(), b)
                .to_string()
        }),
    }
}
