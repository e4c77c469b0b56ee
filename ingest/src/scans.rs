//! Image-scan reports: Trivy (`trivy image -f json`) and Grype (`grype -o json`) normalised into
//! one ImageScan per image, keyed by digest on a compacted topic.

use korvid_schemas::image_ref::split_reference;
use korvid_schemas::{ImageScan, Severity, SeverityCounts, Vulnerability};
use serde::Deserialize;

/// Why a report was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScanParseError {
    /// Not JSON, or not the shape of either scanner's report.
    #[error("not a Trivy or Grype JSON report: {0}")]
    Format(String),
    /// The report does not say which image it is about.
    #[error(
        "the report names no image digest (Trivy: Metadata.RepoDigests/ImageID; Grype: source.target.repoDigests/manifestDigest)"
    )]
    NoDigest,
}

impl ScanParseError {
    /// Stable name for metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            ScanParseError::Format(_) => "invalid_scan",
            ScanParseError::NoDigest => "scan_without_digest",
        }
    }
}

/// Parses a Trivy or Grype JSON report (the format is recognised by its fields).
pub fn parse_scan(body: &[u8], cluster: &str, now_ms: i64) -> Result<ImageScan, ScanParseError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ScanParseError::Format(e.to_string()))?;
    if v.get("SchemaVersion").is_some() && v.get("ArtifactName").is_some() {
        let r: trivy::Report =
            serde_json::from_value(v).map_err(|e| ScanParseError::Format(format!("Trivy: {e}")))?;
        r.into_scan(cluster, now_ms)
    } else if v.get("matches").is_some() && v.get("source").is_some() {
        let r: grype::Report =
            serde_json::from_value(v).map_err(|e| ScanParseError::Format(format!("Grype: {e}")))?;
        r.into_scan(cluster, now_ms)
    } else {
        Err(ScanParseError::Format(
            "expected Trivy's SchemaVersion/ArtifactName or Grype's matches/source".into(),
        ))
    }
}

/// Maps scanner severities (any case) onto ours; unknown and negligible count as low.
fn severity(s: &str) -> Severity {
    Severity::parse(s).unwrap_or(Severity::Low)
}

/// Adds one vulnerability, by the severity the scanner gave it, to `counts`.
fn tally(counts: &mut SeverityCounts, raw: &str) {
    let slot = match raw.to_ascii_lowercase().as_str() {
        "critical" => &mut counts.critical,
        "high" => &mut counts.high,
        "medium" => &mut counts.medium,
        "low" => &mut counts.low,
        _ => &mut counts.unknown,
    };
    *slot = slot.saturating_add(1);
}

/// Converts a Trivy Operator `VulnerabilityReport` object (aquasecurity.github.io) into an
/// ImageScan.
pub fn vulnerability_report(
    object: &serde_json::Value,
    cluster: &str,
    now_ms: i64,
) -> Result<ImageScan, ScanParseError> {
    let report = object.get("report").ok_or_else(|| {
        ScanParseError::Format("a VulnerabilityReport needs a `report` object".into())
    })?;
    let r: operator::Report = serde_json::from_value(report.clone())
        .map_err(|e| ScanParseError::Format(format!("VulnerabilityReport: {e}")))?;
    r.into_scan(cluster, now_ms)
}

/// The digest part of `repo@sha256:...`, or the string itself when it is a bare digest.
fn digest_of(s: &str) -> Option<String> {
    let d = s.rsplit_once('@').map(|(_, d)| d).unwrap_or(s);
    d.starts_with("sha256:").then(|| d.to_string())
}

mod trivy {
    use super::*;

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct Report {
        artifact_name: String,
        #[serde(default)]
        metadata: Metadata,
        #[serde(default)]
        results: Vec<Result_>,
        #[serde(default)]
        trivy: Option<Version>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Metadata {
        #[serde(rename = "OS")]
        os: Option<Os>,
        #[serde(rename = "ImageID")]
        image_id: Option<String>,
        #[serde(default)]
        repo_digests: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Os {
        family: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Version {
        version: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Result_ {
        #[serde(default)]
        vulnerabilities: Vec<Vuln>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Vuln {
        #[serde(rename = "VulnerabilityID")]
        id: String,
        pkg_name: String,
        #[serde(default)]
        installed_version: String,
        fixed_version: Option<String>,
        #[serde(default)]
        severity: String,
        title: Option<String>,
        #[serde(rename = "CVSS", default)]
        cvss: std::collections::BTreeMap<String, Cvss>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Cvss {
        v3_score: Option<f64>,
        v2_score: Option<f64>,
    }

    impl Report {
        pub fn into_scan(self, cluster: &str, now_ms: i64) -> Result<ImageScan, ScanParseError> {
            let digest = self
                .metadata
                .repo_digests
                .iter()
                .find_map(|d| digest_of(d))
                .or_else(|| self.metadata.image_id.as_deref().and_then(digest_of))
                .ok_or(ScanParseError::NoDigest)?;
            let (registry, repository, tag) = split_reference(&self.artifact_name);
            let mut counts = SeverityCounts::default();
            let vulnerabilities = self
                .results
                .into_iter()
                .flat_map(|r| r.vulnerabilities)
                .inspect(|v| tally(&mut counts, &v.severity))
                .map(|v| Vulnerability {
                    severity: severity(&v.severity),
                    cvss: v
                        .cvss
                        .values()
                        .filter_map(|c| c.v3_score.or(c.v2_score))
                        .reduce(f64::max),
                    id: v.id,
                    package: v.pkg_name,
                    installed_version: v.installed_version,
                    fixed_version: v.fixed_version.filter(|f| !f.is_empty()),
                    title: v.title,
                    known_exploited: false,
                })
                .collect();
            Ok(ImageScan {
                cluster: cluster.to_string(),
                event_time: now_ms,
                image_digest: digest,
                image_ref: self.artifact_name,
                registry,
                repository,
                tag,
                scanner: "trivy".into(),
                scanner_version: self.trivy.and_then(|t| t.version),
                os_family: self.metadata.os.and_then(|o| o.family),
                vulnerabilities,
                counts,
            })
        }
    }
}

mod grype {
    use super::*;

    #[derive(Deserialize)]
    pub struct Report {
        matches: Vec<Match>,
        source: Source,
        distro: Option<Distro>,
        descriptor: Option<Descriptor>,
    }

    #[derive(Deserialize)]
    struct Source {
        target: Target,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Target {
        user_input: String,
        #[serde(default)]
        repo_digests: Vec<String>,
        manifest_digest: Option<String>,
    }

    #[derive(Deserialize)]
    struct Distro {
        name: Option<String>,
    }

    #[derive(Deserialize)]
    struct Descriptor {
        version: Option<String>,
    }

    #[derive(Deserialize)]
    struct Match {
        vulnerability: Vuln,
        artifact: Artifact,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Vuln {
        id: String,
        #[serde(default)]
        severity: String,
        description: Option<String>,
        #[serde(default)]
        cvss: Vec<Cvss>,
        fix: Option<Fix>,
        #[serde(default)]
        known_exploited: Vec<serde_json::Value>,
    }

    #[derive(Deserialize)]
    struct Cvss {
        metrics: Option<Metrics>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Metrics {
        base_score: Option<f64>,
    }

    #[derive(Deserialize)]
    struct Fix {
        #[serde(default)]
        versions: Vec<String>,
    }

    #[derive(Deserialize)]
    struct Artifact {
        name: String,
        #[serde(default)]
        version: String,
    }

    impl Report {
        pub fn into_scan(self, cluster: &str, now_ms: i64) -> Result<ImageScan, ScanParseError> {
            let t = self.source.target;
            let digest = t
                .repo_digests
                .iter()
                .find_map(|d| digest_of(d))
                .or_else(|| t.manifest_digest.as_deref().and_then(digest_of))
                .ok_or(ScanParseError::NoDigest)?;
            let (registry, repository, tag) = split_reference(&t.user_input);
            let mut counts = SeverityCounts::default();
            let vulnerabilities = self
                .matches
                .into_iter()
                .inspect(|m| tally(&mut counts, &m.vulnerability.severity))
                .map(|m| Vulnerability {
                    severity: severity(&m.vulnerability.severity),
                    cvss: m
                        .vulnerability
                        .cvss
                        .iter()
                        .filter_map(|c| c.metrics.as_ref()?.base_score)
                        .reduce(f64::max),
                    fixed_version: m
                        .vulnerability
                        .fix
                        .and_then(|f| f.versions.into_iter().next()),
                    known_exploited: !m.vulnerability.known_exploited.is_empty(),
                    title: m.vulnerability.description,
                    id: m.vulnerability.id,
                    package: m.artifact.name,
                    installed_version: m.artifact.version,
                })
                .collect();
            Ok(ImageScan {
                cluster: cluster.to_string(),
                event_time: now_ms,
                image_digest: digest,
                image_ref: t.user_input,
                registry,
                repository,
                tag,
                scanner: "grype".into(),
                scanner_version: self.descriptor.and_then(|d| d.version),
                os_family: self.distro.and_then(|d| d.name),
                vulnerabilities,
                counts,
            })
        }
    }
}

mod operator {
    use super::*;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Report {
        #[serde(default)]
        scanner: Scanner,
        #[serde(default)]
        registry: Registry,
        artifact: Artifact,
        os: Option<Os>,
        summary: Option<Summary>,
        #[serde(default)]
        vulnerabilities: Vec<Vuln>,
        update_timestamp: Option<String>,
    }

    #[derive(Deserialize, Default)]
    struct Scanner {
        version: Option<String>,
    }

    #[derive(Deserialize, Default)]
    struct Registry {
        #[serde(default)]
        server: String,
    }

    #[derive(Deserialize)]
    struct Artifact {
        #[serde(default)]
        repository: String,
        tag: Option<String>,
        digest: Option<String>,
    }

    #[derive(Deserialize)]
    struct Os {
        family: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Summary {
        #[serde(default)]
        critical_count: i32,
        #[serde(default)]
        high_count: i32,
        #[serde(default)]
        medium_count: i32,
        #[serde(default)]
        low_count: i32,
        #[serde(default)]
        unknown_count: i32,
        #[serde(default)]
        none_count: i32,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Vuln {
        #[serde(rename = "vulnerabilityID")]
        id: String,
        #[serde(default)]
        resource: String,
        #[serde(default)]
        installed_version: String,
        fixed_version: Option<String>,
        #[serde(default)]
        severity: String,
        score: Option<f64>,
        title: Option<String>,
    }

    impl Report {
        pub fn into_scan(self, cluster: &str, now_ms: i64) -> Result<ImageScan, ScanParseError> {
            let digest = self
                .artifact
                .digest
                .as_deref()
                .and_then(digest_of)
                .ok_or(ScanParseError::NoDigest)?;
            // Trivy Operator reports Docker Hub as `index.docker.io`.
            let registry = match self.registry.server.as_str() {
                "" | "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
                other => other.to_string(),
            };
            let tag = self.artifact.tag.filter(|t| !t.is_empty());
            let image_ref = match &tag {
                Some(t) => format!("{registry}/{}:{t}", self.artifact.repository),
                None => format!("{registry}/{}@{digest}", self.artifact.repository),
            };
            let mut tallied = SeverityCounts::default();
            let vulnerabilities: Vec<Vulnerability> = self
                .vulnerabilities
                .into_iter()
                .inspect(|v| tally(&mut tallied, &v.severity))
                .map(|v| Vulnerability {
                    severity: severity(&v.severity),
                    cvss: v.score,
                    id: v.id,
                    package: v.resource,
                    installed_version: v.installed_version,
                    fixed_version: v.fixed_version.filter(|f| !f.is_empty()),
                    title: v.title,
                    known_exploited: false,
                })
                .collect();
            // The summary counts everything even when the list was trimmed (reportTTL, size).
            let counts = match self.summary {
                Some(s) => SeverityCounts {
                    critical: s.critical_count,
                    high: s.high_count,
                    medium: s.medium_count,
                    low: s.low_count,
                    unknown: s.unknown_count.saturating_add(s.none_count),
                },
                None => tallied,
            };
            let event_time = self
                .update_timestamp
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(now_ms, |t| t.timestamp_millis());
            Ok(ImageScan {
                cluster: cluster.to_string(),
                event_time,
                image_digest: digest,
                image_ref,
                registry,
                repository: self.artifact.repository,
                tag,
                scanner: "trivy-operator".into(),
                scanner_version: self.scanner.version,
                os_family: self.os.and_then(|o| o.family),
                vulnerabilities,
                counts,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31";

    #[test]
    fn trivy_reports_normalise() {
        let body = serde_json::json!({
            "SchemaVersion": 2, "ArtifactName": "ghcr.io/acme/shop:1.4.2", "ArtifactType": "container_image",
            "Metadata": {"OS": {"Family": "debian", "Name": "12.5"}, "ImageID": "sha256:ffff",
                         "RepoDigests": [format!("ghcr.io/acme/shop@{DIGEST}")]},
            "Results": [
                {"Target": "ghcr.io/acme/shop:1.4.2 (debian 12.5)", "Class": "os-pkgs",
                 "Vulnerabilities": [
                    {"VulnerabilityID": "CVE-2024-0001", "PkgName": "openssl", "InstalledVersion": "3.0.11",
                     "FixedVersion": "3.0.13", "Severity": "CRITICAL", "Title": "bad",
                     "CVSS": {"nvd": {"V3Score": 9.8}, "redhat": {"V3Score": 8.1}}},
                    {"VulnerabilityID": "CVE-2024-0002", "PkgName": "zlib", "InstalledVersion": "1.2",
                     "Severity": "UNKNOWN"}]},
                {"Target": "app", "Class": "lang-pkgs"}],
            "Trivy": {"Version": "0.50.1"}
        });
        let s = parse_scan(body.to_string().as_bytes(), "c", 7).expect("parses");
        assert_eq!(s.image_digest, DIGEST);
        assert_eq!(
            (s.registry.as_str(), s.repository.as_str(), s.tag.as_deref()),
            ("ghcr.io", "acme/shop", Some("1.4.2"))
        );
        assert_eq!(s.scanner_version.as_deref(), Some("0.50.1"));
        assert_eq!(s.vulnerabilities.len(), 2);
        assert_eq!(s.vulnerabilities[0].severity, Severity::Critical);
        assert_eq!(s.vulnerabilities[0].cvss, Some(9.8));
        assert_eq!(s.vulnerabilities[1].severity, Severity::Low);
        assert_eq!(s.vulnerabilities[1].fixed_version, None);
    }

    #[test]
    fn grype_reports_normalise() {
        let body = serde_json::json!({
            "matches": [{"vulnerability": {"id": "GHSA-xxxx", "severity": "High", "description": "d",
                          "cvss": [{"metrics": {"baseScore": 7.5}}], "fix": {"versions": ["2.0.1"], "state": "fixed"},
                          "knownExploited": [{"cve": "CVE-2024-9"}]},
                         "artifact": {"name": "lodash", "version": "4.17.20", "type": "npm"}}],
            "source": {"type": "image", "target": {"userInput": "nginx:1.25", "manifestDigest": DIGEST}},
            "distro": {"name": "debian", "version": "12"},
            "descriptor": {"name": "grype", "version": "0.74.0"}
        });
        let s = parse_scan(body.to_string().as_bytes(), "c", 7).expect("parses");
        assert_eq!(
            (s.registry.as_str(), s.repository.as_str()),
            ("docker.io", "library/nginx")
        );
        let v = &s.vulnerabilities[0];
        assert_eq!(
            (
                v.severity,
                v.cvss,
                v.fixed_version.as_deref(),
                v.known_exploited
            ),
            (Severity::High, Some(7.5), Some("2.0.1"), true)
        );
    }

    #[test]
    fn bad_reports_are_refused_with_a_reason() {
        assert_eq!(
            parse_scan(b"{}", "c", 0).expect_err("empty").kind(),
            "invalid_scan"
        );
        assert_eq!(
            parse_scan(b"[", "c", 0).expect_err("broken").kind(),
            "invalid_scan"
        );
        let no_digest =
            serde_json::json!({"SchemaVersion": 2, "ArtifactName": "x", "Metadata": {}});
        assert_eq!(
            parse_scan(no_digest.to_string().as_bytes(), "c", 0),
            Err(ScanParseError::NoDigest)
        );
        let wrong_type = serde_json::json!({"matches": "many", "source": {}});
        assert!(parse_scan(wrong_type.to_string().as_bytes(), "c", 0).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            parse_scan(deep.as_bytes(), "c", 0)
                .expect_err("too deep")
                .kind(),
            "invalid_scan"
        );
    }
}
