//! `korvid scan PATH...`: offline detection with the stream's own code. Every file is
//! recognised by its content — Kubernetes manifests and `kubectl get -A -o json` dumps (YAML or
//! JSON, multi-document, Lists), audit logs (JSON lines, arrays, EventLists, EKS/GKE/AKS
//! exports), Trivy/Grype reports and Trivy Operator VulnerabilityReports — then ingest's
//! parsers, enrich's offline windows and the rule engine run as they do online.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use korvid_detect::{Exceptions, RuleEngine};
use korvid_ingest::sanitize::Sanitizer;
use korvid_schemas::{AuditEvent, Finding, ImageScan, ObjectChange, ObjectOp, Severity};
use serde_json::{Value, json};

use crate::settings::KorvidSettings;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Findings grouped by severity, for people.
    Table,
    /// A JSON array of findings.
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

/// Files read, and what they held.
#[derive(Default)]
pub(crate) struct Inputs {
    objects: Vec<ObjectChange>,
    scans: Vec<ImageScan>,
    events: Vec<AuditEvent>,
    /// Entity id (`Kind/ns/name`) -> the file it came from, for locations.
    origins: BTreeMap<String, String>,
    /// (where, why) for documents that were not usable.
    refused: Vec<(String, String)>,
    files: usize,
}

impl Inputs {
    /// Keeps an object and the file it came from (the first file, when several hold it).
    fn add_object(&mut self, c: ObjectChange, origin: &str) {
        let id = format!(
            "{}/{}/{}",
            c.kind,
            c.namespace.as_deref().unwrap_or(""),
            c.name
        );
        self.origins.entry(id).or_insert_with(|| origin.to_string());
        self.objects.push(c);
    }
}

/// How to judge and report.
pub struct Options {
    /// Output format.
    pub format: Format,
    /// Lowest severity that makes the exit code 1 (`None`: never).
    pub fail_on: Option<Severity>,
    /// A file of accepted risks.
    pub exceptions: Option<PathBuf>,
    /// Keep each window's findings instead of one per rule and subject.
    pub per_window: bool,
}

/// Runs the scan; returns the process exit code (0, 1 when something reaches `fail_on`, 2 when
/// input or the exceptions file was unreadable).
pub async fn run(
    paths: &[PathBuf],
    options: &Options,
    settings: &KorvidSettings,
) -> anyhow::Result<u8> {
    let exceptions = match &options.exceptions {
        Some(path) => match Exceptions::load(path) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("korvid scan: exceptions: {e}");
                return Ok(2);
            }
        },
        None => Exceptions::default(),
    };
    let Some(mut inputs) = read_inputs(paths, settings)? else {
        return Ok(2);
    };
    let catalog = crate::rules_cmd::catalog(settings);
    for e in &catalog.errors {
        eprintln!("korvid scan: rule not loaded: {e}");
    }
    let engine = RuleEngine::new(catalog)
        .await
        .context("planning the rules")?;
    let (object_count, event_count) = (inputs.objects.len(), inputs.events.len());
    let windows = inputs.windows(settings).await?;
    let mut findings: BTreeMap<String, Finding> = BTreeMap::new();
    for w in &windows.windows {
        let eval = engine.evaluate(w, w.window_end).await?;
        for (rule, err) in &eval.failed_rules {
            eprintln!("korvid scan: rule {rule} failed: {err}");
        }
        for f in eval.findings {
            // The same subject found in several windows is one finding for a scan, unless every
            // window's finding was asked for (to compare with labelled traffic, say).
            let key = if options.per_window {
                f.id.clone()
            } else {
                f.fingerprint.clone()
            };
            findings.entry(key).or_insert(f);
        }
    }
    let mut findings: Vec<Finding> = findings.into_values().collect();
    let now = korvid_common::now_millis();
    for e in exceptions.expired(now) {
        eprintln!(
            "korvid scan: exception {:?} (owner {}) has expired and no longer applies",
            e.name, e.owner
        );
    }
    for (name, n) in exceptions.apply(&mut findings, now) {
        eprintln!("korvid scan: exception {name:?} left out {n} findings");
    }
    findings.sort_by(|a, b| {
        (b.severity, &a.rule_id, a.subject.to_string()).cmp(&(
            a.severity,
            &b.rule_id,
            b.subject.to_string(),
        ))
    });
    for (at, why) in &inputs.refused {
        eprintln!("korvid scan: skipped {at}: {why}");
    }
    let fallback = paths
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match options.format {
        Format::Table => print_table(
            &findings,
            inputs.files,
            object_count,
            event_count,
            windows.windows.len(),
        ),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&findings_json(&findings))?
        ),
        Format::Sarif => println!(
            "{}",
            serde_json::to_string_pretty(&sarif(&findings, &inputs.origins, &fallback, &engine))?
        ),
    }
    let failing = options
        .fail_on
        .is_some_and(|min| findings.iter().any(|f| f.severity >= min));
    Ok(u8::from(failing))
}

/// Reads every file below `paths`; `None` (after naming each on stderr) when some cannot be
/// read.
pub(crate) fn read_inputs(
    paths: &[PathBuf],
    settings: &KorvidSettings,
) -> anyhow::Result<Option<Inputs>> {
    let cluster = settings.ingest.cluster.clone();
    let sanitizer = Sanitizer::new(b"korvid-scan-offline-key");
    let (files, unreadable) =
        korvid_ingest::snapshot::files_below(paths, &["yaml", "yml", "json", "jsonl", "log"]);
    if !unreadable.is_empty() {
        for r in &unreadable {
            eprintln!("korvid: cannot read {}: {}", r.origin, r.reason);
        }
        return Ok(None);
    }
    let mut inputs = Inputs::default();
    let progress = std::io::stderr().is_terminal() && files.len() > 20;
    for (i, file) in files.iter().enumerate() {
        if progress {
            eprint!("\rkorvid: reading {}/{} files", i + 1, files.len());
        }
        read_file(file, &cluster, &sanitizer, &mut inputs)
            .with_context(|| format!("reading {}", file.display()))?;
    }
    if progress {
        eprintln!();
    }
    Ok(Some(inputs))
}

impl Inputs {
    /// Every graph window the pipeline would build from what was read (takes the scans and
    /// events).
    pub(crate) async fn windows(
        &mut self,
        settings: &KorvidSettings,
    ) -> anyhow::Result<korvid_enrich::offline::OfflineWindows> {
        Ok(korvid_enrich::offline::windows(
            &self.objects,
            std::mem::take(&mut self.scans),
            std::mem::take(&mut self.events),
            settings.enrich.window_ms,
            settings.enrich.max_window_nodes,
        )
        .await?)
    }
}

/// Reads one file into `inputs`, recognising each document by its content.
fn read_file(
    file: &std::path::Path,
    cluster: &str,
    sanitizer: &Sanitizer,
    inputs: &mut Inputs,
) -> anyhow::Result<()> {
    inputs.files += 1;
    let origin = file.display().to_string();
    let bytes = std::fs::read(file)?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let docs: Vec<Result<Value, String>> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: one document, an array, or JSON lines (a stream of documents).
        let mut docs = Vec::new();
        for v in serde_json::Deserializer::from_str(trimmed).into_iter::<Value>() {
            match v {
                Ok(v) => docs.push(Ok(v)),
                Err(e) => {
                    docs.push(Err(format!("invalid JSON: {e}")));
                    break;
                }
            }
        }
        docs
    } else {
        match korvid_ingest::snapshot::parse_documents(&bytes) {
            Ok(d) => d,
            Err(e) => vec![Err(e)],
        }
    };
    for (i, doc) in docs.into_iter().enumerate() {
        let at = format!("{origin}#{}", i + 1);
        match doc {
            Ok(v) => classify(v, &at, &origin, cluster, sanitizer, inputs),
            Err(e) => inputs.refused.push((at, e)),
        }
    }
    Ok(())
}

fn classify(
    doc: Value,
    at: &str,
    origin: &str,
    cluster: &str,
    sanitizer: &Sanitizer,
    inputs: &mut Inputs,
) {
    let s = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (kind, api_version) = (s("kind"), s("apiVersion"));
    let is_audit = api_version.starts_with("audit.k8s.io")
        || (doc.get("auditID").is_some() && doc.get("verb").is_some())
        || korvid_ingest::managed::detect(&doc).is_some()
        || doc.as_array().and_then(|a| a.first()).is_some_and(|f| {
            f.get("auditID").is_some() || korvid_ingest::managed::detect(f).is_some()
        });
    if is_audit {
        let mut doc = doc;
        if doc.get("auditID").is_some() && doc.get("apiVersion").is_none() {
            // A bare event (some recorders drop kind and apiVersion).
            doc["kind"] = "Event".into();
            doc["apiVersion"] = "audit.k8s.io/v1".into();
        }
        match korvid_ingest::audit::parse_value(doc, true, cluster, sanitizer) {
            Ok(batch) => {
                for e in &batch.events {
                    object_from_request(e, origin, cluster, sanitizer, inputs);
                }
                inputs.events.extend(batch.events);
                for (e, _) in batch.rejected {
                    inputs.refused.push((at.to_string(), e.to_string()));
                }
            }
            Err(e) => inputs.refused.push((at.to_string(), e.to_string())),
        }
        return;
    }
    let is_report = (doc.get("SchemaVersion").is_some() && doc.get("ArtifactName").is_some())
        || (doc.get("matches").is_some() && doc.get("source").is_some());
    if is_report {
        match korvid_ingest::scans::parse_scan(doc.to_string().as_bytes(), cluster, 0) {
            Ok(scan) => inputs.scans.push(scan),
            Err(e) => inputs.refused.push((at.to_string(), e.to_string())),
        }
        return;
    }
    if let Value::Array(items) = doc {
        for item in items {
            classify(item, at, origin, cluster, sanitizer, inputs);
        }
        return;
    }
    if kind == "VulnerabilityReport" {
        match korvid_ingest::scans::vulnerability_report(&doc, cluster, 0) {
            Ok(scan) => inputs.scans.push(scan),
            Err(e) => inputs.refused.push((at.to_string(), e.to_string())),
        }
        return;
    }
    for object in korvid_ingest::snapshot::objects_in(doc) {
        match korvid_ingest::objects::object_change(
            cluster,
            ObjectOp::Snapshot,
            object,
            None,
            sanitizer,
            0,
        ) {
            Ok(c) => inputs.add_object(c, origin),
            Err(e) => inputs.refused.push((at.to_string(), e.to_string())),
        }
    }
}

/// A successful create or update carries the whole object it wrote (already sanitised): with
/// no watcher offline, that is the best record of what the cluster holds.
fn object_from_request(
    e: &AuditEvent,
    origin: &str,
    cluster: &str,
    sanitizer: &Sanitizer,
    inputs: &mut Inputs,
) {
    let written = matches!(e.verb.as_str(), "create" | "update")
        && e.subresource.is_none()
        && e.response_code.is_none_or(|c| c < 400);
    let Some(body) = e.request_object.as_deref().filter(|_| written) else {
        return;
    };
    let Ok(mut object) = serde_json::from_str::<Value>(body) else {
        return;
    };
    if !object.get("kind").is_some_and(Value::is_string) {
        return;
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(ns) = &e.namespace {
            meta.entry("namespace")
                .or_insert_with(|| Value::String(ns.clone()));
        }
        if let Some(name) = &e.name {
            meta.entry("name")
                .or_insert_with(|| Value::String(name.clone()));
        }
    }
    if let Ok(c) =
        korvid_ingest::objects::object_change(cluster, ObjectOp::Upsert, object, None, sanitizer, 0)
    {
        inputs.add_object(c, origin);
    }
}

fn print_table(findings: &[Finding], files: usize, objects: usize, events: usize, windows: usize) {
    let mut by_severity: BTreeMap<std::cmp::Reverse<Severity>, Vec<&Finding>> = BTreeMap::new();
    for f in findings {
        by_severity
            .entry(std::cmp::Reverse(f.severity))
            .or_default()
            .push(f);
    }
    for (sev, list) in &by_severity {
        println!("{} ({})", sev.0.as_str().to_ascii_uppercase(), list.len());
        for f in list {
            println!(
                "  {:<9} {:<22} {:<48} {}",
                f.rule_id.as_deref().unwrap_or("model"),
                f.tactic.as_str(),
                f.subject.to_string(),
                f.title
            );
        }
    }
    let counts: Vec<String> = by_severity
        .iter()
        .map(|(s, l)| format!("{} {}", l.len(), s.0.as_str()))
        .collect();
    println!(
        "\n{} findings ({}) from {} files: {} objects, {} audit events in {} windows",
        findings.len(),
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
        files,
        objects,
        events,
        windows
    );
}

/// The JSON format: one object per finding with the fields CI pipelines key on.
fn findings_json(findings: &[Finding]) -> Value {
    Value::Array(
        findings
            .iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "rule_id": f.rule_id,
                    "detector": format!("{:?}", f.detector).to_ascii_lowercase(),
                    "tactic": f.tactic.as_str(),
                    "mitre": f.techniques,
                    "severity": f.severity.as_str(),
                    "subject": {
                        "cluster": f.cluster,
                        "kind": f.subject.kind,
                        "namespace": f.subject.namespace,
                        "name": f.subject.name,
                        "uid": f.subject.uid,
                    },
                    "title": f.title,
                    "evidence": f.evidence.iter().map(|e| (e.name.clone(), Value::String(e.value.clone()))).collect::<serde_json::Map<_, _>>(),
                    "implication": f.implication,
                    "remediation": f.remediation,
                    "prevention": f.prevention,
                    "references": f.references,
                    "fingerprint": f.fingerprint,
                })
            })
            .collect(),
    )
}

/// SARIF 2.1.0: one rule per catalog rule that fired, one result per finding, located at the
/// file its subject came from.
fn sarif(
    findings: &[Finding],
    origins: &BTreeMap<String, String>,
    fallback: &str,
    engine: &RuleEngine,
) -> Value {
    let fired: BTreeSet<&str> = findings
        .iter()
        .filter_map(|f| f.rule_id.as_deref())
        .collect();
    let rules: Vec<Value> = engine
        .rules()
        .filter(|r| fired.contains(r.id.as_str()))
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.title,
                "shortDescription": {"text": r.title},
                "fullDescription": {"text": r.implication},
                "help": {"text": format!("{}\n\nPrevention: {}", r.remediation, r.prevention)},
                "helpUri": r.references.first(),
                "properties": {
                    "tags": std::iter::once(r.tactic.as_str().to_string()).chain(r.techniques.iter().cloned()).collect::<Vec<_>>(),
                    "security-severity": match r.severity {
                        Severity::Critical => "9.5",
                        Severity::High => "8.0",
                        Severity::Medium => "5.5",
                        Severity::Low => "2.0",
                    },
                },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let id = format!(
                "{}/{}/{}",
                f.subject.kind,
                f.subject.namespace.as_deref().unwrap_or(""),
                f.subject.name
            );
            let uri = origins.get(&id).map_or(fallback, String::as_str);
            json!({
                "ruleId": f.rule_id.as_deref().unwrap_or("model"),
                "level": match f.severity {
                    Severity::Critical | Severity::High => "error",
                    Severity::Medium => "warning",
                    Severity::Low => "note",
                },
                "message": {"text": format!("{}: {}", f.title, f.subject)},
                "locations": [{
                    "physicalLocation": {"artifactLocation": {"uri": uri}},
                    "logicalLocations": [{"fullyQualifiedName": id, "kind": "resource"}],
                }],
                "partialFingerprints": {"korvid/v1": f.fingerprint},
                "properties": {
                    "tactic": f.tactic.as_str(),
                    "mitre": f.techniques,
                    "evidence": f.evidence.iter().map(|e| format!("{}={}", e.name, e.value)).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "korvid",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/korvid/korvid",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
