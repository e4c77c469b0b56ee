//! `[ingest]` settings.

use std::path::PathBuf;

use korvid_common::http_server::BearerToken;
use korvid_common::settings::{
    SettingsError, Validate, require_non_empty, require_range, require_socket_addr,
};
use korvid_common::tls::ServerTlsSettings;
use serde::Deserialize;

/// `[ingest]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Cluster id stamped on every record (many clusters can share one pipeline).
    pub cluster: String,
    /// Key for the keyed hashes that replace secret values. Unset: a random key per process
    /// (hashes then only match within one run).
    pub redaction_key: Option<String>,
    /// The audit webhook.
    pub audit_webhook: AuditWebhookSettings,
    /// Audit log files to tail (`[[ingest.audit_logs]]`).
    pub audit_logs: Vec<AuditLogSettings>,
    /// Watching the Kubernetes API.
    pub kubernetes: KubernetesSettings,
    /// Directories of Trivy/Grype JSON reports to pick up (`[[ingest.scan_dirs]]`).
    pub scan_dirs: Vec<ScanDirSettings>,
}

/// `[ingest.kubernetes]`: list/watch the cluster's objects and Events.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesSettings {
    /// Watch the cluster (off by default: the embedded `make up` has no cluster).
    pub enabled: bool,
    /// Kubeconfig file. Unset: the in-cluster service account, else `$KUBECONFIG`, else
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (unset: its current context).
    pub context: Option<String>,
    /// Kinds to watch, as `group/version/Kind` (`v1/Kind` for the core group), optionally with
    /// `=plural` when the plural is irregular. core/v1 Events become KubeEvents;
    /// Trivy Operator VulnerabilityReports become ImageScans; everything else ObjectChanges.
    pub kinds: Vec<String>,
    /// Extra kinds (typically CRDs) on top of `kinds`, same syntax.
    pub extra_kinds: Vec<String>,
    /// Objects per list page.
    pub page_size: u32,
}

/// The kinds watched by default: what detection reasons about, and nothing that carries
/// workload data beyond metadata.
pub const DEFAULT_KINDS: &[&str] = &[
    "v1/Namespace",
    "v1/Node",
    "v1/Pod",
    "v1/Service",
    "v1/ServiceAccount",
    "v1/Secret",
    "v1/ConfigMap",
    "v1/PersistentVolume",
    "v1/PersistentVolumeClaim",
    "v1/Event",
    "apps/v1/Deployment",
    "apps/v1/ReplicaSet",
    "apps/v1/DaemonSet",
    "apps/v1/StatefulSet",
    "batch/v1/Job",
    "batch/v1/CronJob",
    "discovery.k8s.io/v1/EndpointSlice",
    "networking.k8s.io/v1/Ingress",
    "networking.k8s.io/v1/NetworkPolicy",
    "rbac.authorization.k8s.io/v1/Role",
    "rbac.authorization.k8s.io/v1/ClusterRole",
    "rbac.authorization.k8s.io/v1/RoleBinding",
    "rbac.authorization.k8s.io/v1/ClusterRoleBinding",
    "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration",
    "admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration",
    "aquasecurity.github.io/v1alpha1/VulnerabilityReport",
];

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            enabled: false,
            kubeconfig: None,
            context: None,
            kinds: DEFAULT_KINDS.iter().map(|k| k.to_string()).collect(),
            extra_kinds: Vec::new(),
            page_size: 500,
        }
    }
}

/// One parsed entry of `ingest.kubernetes.kinds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KindSpec {
    /// API group (empty for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name, when given.
    pub plural: Option<String>,
}

impl KindSpec {
    /// Parses `group/version/Kind[=plural]` or `v1/Kind[=plural]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (path, plural) = match spec.split_once('=') {
            Some((p, plural)) if !plural.is_empty() => (p, Some(plural.to_string())),
            Some(_) => return Err(format!("`{spec}`: empty plural after '='")),
            None => (spec, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (group, version, kind) = match parts.as_slice() {
            [v, k] => ("", *v, *k),
            [g, v, k] => (*g, *v, *k),
            _ => return Err(format!("`{spec}`: expected group/version/Kind or v1/Kind")),
        };
        if version.is_empty()
            || kind.is_empty()
            || !kind.starts_with(|c: char| c.is_ascii_uppercase())
        {
            return Err(format!(
                "`{spec}`: version must be set and Kind must start with a capital letter"
            ));
        }
        Ok(KindSpec {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural,
        })
    }

    /// The API resource (plural name and URL path) the watcher lists and watches.
    pub fn api_resource(&self) -> kube::api::ApiResource {
        let gvk = kube::api::GroupVersionKind::gvk(&self.group, &self.version, &self.kind);
        match &self.plural {
            Some(p) => kube::api::ApiResource::from_gvk_with_plural(&gvk, p),
            None => kube::api::ApiResource::from_gvk(&gvk),
        }
    }

    /// `apiVersion` of objects of this kind.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl KubernetesSettings {
    /// Every kind to watch, parsed, without repeats.
    pub fn kind_specs(&self) -> Result<Vec<KindSpec>, SettingsError> {
        let mut out: Vec<KindSpec> = Vec::new();
        for (list, key) in [(&self.kinds, "kinds"), (&self.extra_kinds, "extra_kinds")] {
            for spec in list {
                let k = KindSpec::parse(spec)
                    .map_err(|e| SettingsError::invalid(format!("ingest.kubernetes.{key}"), e))?;
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }
}

/// `[[ingest.scan_dirs]]`: a directory where CI or a cron job drops scanner reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanDirSettings {
    /// The directory; every `*.json` file in it is read once per content change.
    pub path: PathBuf,
    /// How often to look for new or changed reports.
    #[serde(default = "default_scan_poll_ms")]
    pub poll_ms: u64,
}

fn default_scan_poll_ms() -> u64 {
    1000
}

/// One audit log file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogSettings {
    /// The file kube-apiserver writes (`--audit-log-path`), or any file of audit events.
    pub path: PathBuf,
    /// How often to look for new lines and rotation.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_poll_ms() -> u64 {
    250
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            cluster: "default".into(),
            redaction_key: None,
            audit_webhook: AuditWebhookSettings::default(),
            audit_logs: Vec::new(),
            kubernetes: KubernetesSettings::default(),
            scan_dirs: Vec::new(),
        }
    }
}

/// `[ingest.audit_webhook]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditWebhookSettings {
    /// Serve the webhook.
    pub enabled: bool,
    /// Listen address.
    pub listen: String,
    /// Request path kube-apiserver posts to.
    pub path: String,
    /// Request path for Trivy/Grype JSON reports on the same server.
    pub scans_path: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Batches handled at once; more get 429 with Retry-After.
    pub max_in_flight: usize,
    /// Serve HTTPS (and optionally require client certificates).
    pub tls: Option<ServerTlsSettings>,
    /// File holding a token every request must present as `Authorization: Bearer <token>`.
    pub bearer_token_file: Option<PathBuf>,
}

impl Default for AuditWebhookSettings {
    fn default() -> Self {
        AuditWebhookSettings {
            enabled: true,
            listen: "127.0.0.1:9440".into(),
            path: "/audit/webhook".into(),
            scans_path: "/scans".into(),
            max_body_bytes: 16 << 20,
            max_in_flight: 32,
            tls: None,
            bearer_token_file: None,
        }
    }
}

impl Validate for IngestSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        require_non_empty("ingest.cluster", &self.cluster)?;
        if self.cluster.contains('/') {
            return Err(SettingsError::invalid(
                "ingest.cluster",
                "must not contain '/' (it is part of record keys)",
            ));
        }
        if let Some(k) = &self.redaction_key
            && k.len() < 16
        {
            return Err(SettingsError::invalid(
                "ingest.redaction_key",
                "must be at least 16 characters",
            ));
        }
        for (i, log) in self.audit_logs.iter().enumerate() {
            let key = format!("ingest.audit_logs[{i}]");
            require_range(&format!("{key}.poll_ms"), log.poll_ms, 10, 60_000)?;
            let dir = log.path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(SettingsError::invalid(
                    format!("{key}.path"),
                    format!("the directory of {} does not exist", log.path.display()),
                ));
            }
        }
        let k = &self.kubernetes;
        if k.enabled && k.kind_specs()?.is_empty() {
            return Err(SettingsError::invalid(
                "ingest.kubernetes.kinds",
                "watching is enabled but no kind is listed",
            ));
        }
        k.kind_specs()?;
        require_range("ingest.kubernetes.page_size", k.page_size, 1, 10_000)?;
        if let Some(f) = &k.kubeconfig
            && k.enabled
            && !f.is_file()
        {
            return Err(SettingsError::invalid(
                "ingest.kubernetes.kubeconfig",
                format!("{} is not a file", f.display()),
            ));
        }
        for (i, d) in self.scan_dirs.iter().enumerate() {
            let key = format!("ingest.scan_dirs[{i}]");
            require_range(&format!("{key}.poll_ms"), d.poll_ms, 10, 600_000)?;
            if !d.path.is_dir() {
                return Err(SettingsError::invalid(
                    format!("{key}.path"),
                    format!("{} is not a directory", d.path.display()),
                ));
            }
        }
        let w = &self.audit_webhook;
        require_socket_addr("ingest.audit_webhook.listen", &w.listen)?;
        if !w.path.starts_with('/') {
            return Err(SettingsError::invalid(
                "ingest.audit_webhook.path",
                "must start with '/'",
            ));
        }
        if !w.scans_path.starts_with('/') || w.scans_path == w.path {
            return Err(SettingsError::invalid(
                "ingest.audit_webhook.scans_path",
                "must start with '/' and differ from ingest.audit_webhook.path",
            ));
        }
        require_range(
            "ingest.audit_webhook.max_body_bytes",
            w.max_body_bytes,
            1024,
            1 << 30,
        )?;
        require_range(
            "ingest.audit_webhook.max_in_flight",
            w.max_in_flight,
            1,
            4096,
        )?;
        if let Some(tls) = &w.tls {
            tls.validate("ingest.audit_webhook.tls")?;
        }
        if let Some(f) = &w.bearer_token_file {
            BearerToken::from_file("ingest.audit_webhook.bearer_token_file", f)?;
        }
        Ok(())
    }
}
