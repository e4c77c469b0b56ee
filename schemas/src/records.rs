//! Rust types for every record korvid writes to Kafka.
//!
//! The `.avsc` files under `schemas/avro/` are the source of truth; these types mirror them field for
//! field (a test compares the schema derived from each type with its `.avsc`).

use std::collections::{HashMap, HashSet};

use apache_avro::AvroSchema;
use apache_avro::schema::{Name, NamespaceRef, Schema};
use serde::{Deserialize, Serialize};

/// Avro `timestamp-millis`, for the derive to match the `.avsc` files.
fn timestamp_millis(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
    Schema::TimestampMillis
}

/// Avro `timestamp-micros`, for the derive to match the `.avsc` files.
fn timestamp_micros(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
    Schema::TimestampMicros
}

/// How an object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[avro(namespace = "io.korvid.v1")]
#[allow(missing_docs)] // variant docs are plain comments: the Avro derive refuses doc attributes on them
pub enum ObjectOp {
    // Created or modified.
    Upsert,
    // Removed from the cluster.
    Delete,
    // Seen during an initial list or a re-list.
    Snapshot,
}

/// One change of a Kubernetes object (`korvid.k8s.objects.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct ObjectChange {
    /// Cluster id.
    pub cluster: String,
    /// When the change was observed, in milliseconds since the epoch.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// What happened to the object.
    pub op: ObjectOp,
    /// `metadata.uid`.
    pub uid: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.namespace`, absent for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// `metadata.labels`.
    pub labels: HashMap<String, String>,
    /// The sanitised object as JSON.
    pub object_json: Option<String>,
}

/// One API-server audit event (`korvid.k8s.audit.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct AuditEvent {
    /// Cluster id.
    pub cluster: String,
    /// `stageTimestamp` (else `requestReceivedTimestamp`), in microseconds since the epoch.
    #[avro(with = timestamp_micros)]
    pub event_time: i64,
    /// `auditID`.
    pub audit_id: String,
    /// `stage`, e.g. `ResponseComplete`.
    pub stage: String,
    /// `level`, e.g. `Metadata`.
    pub level: String,
    /// `verb`, e.g. `create`.
    pub verb: String,
    /// `requestURI`.
    pub request_uri: String,
    /// `user.username`.
    pub user: String,
    /// `user.groups`.
    pub groups: Vec<String>,
    /// `impersonatedUser.username`.
    pub impersonated_user: Option<String>,
    /// `sourceIPs`.
    pub source_ips: Vec<String>,
    /// `userAgent`.
    pub user_agent: Option<String>,
    /// `objectRef.apiGroup`.
    pub api_group: Option<String>,
    /// `objectRef.apiVersion`.
    pub api_version: Option<String>,
    /// `objectRef.resource`.
    pub resource: Option<String>,
    /// `objectRef.subresource`.
    pub subresource: Option<String>,
    /// `objectRef.namespace`.
    pub namespace: Option<String>,
    /// `objectRef.name`.
    pub name: Option<String>,
    /// `responseStatus.code`.
    pub response_code: Option<i32>,
    /// `annotations` (authorization decision and reason among them).
    pub annotations: HashMap<String, String>,
    /// Sanitised `requestObject` as JSON.
    pub request_object: Option<String>,
}

/// One Kubernetes Event (`korvid.k8s.events.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct KubeEvent {
    /// Cluster id.
    pub cluster: String,
    /// Last time the event occurred, in milliseconds since the epoch.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `type`: Normal or Warning.
    pub event_type: String,
    /// `reason`.
    pub reason: String,
    /// `message`.
    pub message: String,
    /// `involvedObject.kind`.
    pub involved_kind: String,
    /// `involvedObject.namespace`.
    pub involved_namespace: Option<String>,
    /// `involvedObject.name`.
    pub involved_name: String,
    /// `involvedObject.uid`.
    pub involved_uid: Option<String>,
    /// `source.component` or `reportingController`.
    pub source_component: Option<String>,
    /// `count`.
    pub count: i32,
}

/// Severity of a vulnerability, a finding or an alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, AvroSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[avro(namespace = "io.korvid.v1")]
#[allow(missing_docs)] // variant docs are plain comments: the Avro derive refuses doc attributes on them
pub enum Severity {
    // Worth knowing.
    Low,
    // Worth a look today.
    Medium,
    // Worth a look now.
    High,
    // Act now.
    Critical,
}

impl Severity {
    /// Lower-case name, as rules and config spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses the lower-case (or upper-case) name.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// One vulnerability found in an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct Vulnerability {
    /// CVE or advisory id.
    pub id: String,
    /// Normalised severity.
    pub severity: Severity,
    /// Affected package.
    pub package: String,
    /// Installed version of the package.
    pub installed_version: String,
    /// First fixed version, if any.
    pub fixed_version: Option<String>,
    /// Short title.
    pub title: Option<String>,
    /// CVSS base score.
    pub cvss: Option<f64>,
    /// Listed as exploited in the wild.
    pub known_exploited: bool,
}

/// A vulnerability scan of one image (`korvid.image.scans.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct ImageScan {
    /// Cluster id.
    pub cluster: String,
    /// When the scan ran, in milliseconds since the epoch.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// `sha256:...` digest.
    pub image_digest: String,
    /// The reference as written in the pod spec.
    pub image_ref: String,
    /// Registry host.
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// `trivy`, `grype`, `trivy-operator`.
    pub scanner: String,
    /// Scanner version.
    pub scanner_version: Option<String>,
    /// OS family of the image.
    pub os_family: Option<String>,
    /// Every vulnerability found.
    pub vulnerabilities: Vec<Vulnerability>,
    /// Vulnerabilities by severity as the scanner reported it (`unknown` and negligible ones,
    /// filed as low in `vulnerabilities`, are counted apart here).
    #[avro(default = r#"{"critical": 0, "high": 0, "medium": 0, "low": 0, "unknown": 0}"#)]
    #[serde(default)]
    pub counts: SeverityCounts,
}

/// Vulnerability counts of one image by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct SeverityCounts {
    /// Critical.
    pub critical: i32,
    /// High.
    pub high: i32,
    /// Medium.
    pub medium: i32,
    /// Low.
    pub low: i32,
    /// Unknown, negligible or unrated.
    pub unknown: i32,
}

/// Whether a window holds changes or the whole inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[avro(namespace = "io.korvid.v1")]
#[allow(missing_docs)] // variant docs are plain comments: the Avro derive refuses doc attributes on them
pub enum WindowKind {
    // Changed and active entities with their neighbourhood.
    Incremental,
    // A periodic re-evaluation of the whole inventory.
    Full,
}

/// A window of the cluster graph (`korvid.graph.windows.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct GraphWindow {
    /// Cluster id.
    pub cluster: String,
    /// Window end, in milliseconds since the epoch.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// Deterministic id of the window.
    pub window_id: String,
    /// Incremental or full.
    pub kind: WindowKind,
    /// The partition key (cluster/namespace).
    pub partition_key: String,
    /// Window start (inclusive), milliseconds.
    #[avro(with = timestamp_millis)]
    pub window_start: i64,
    /// Window end (exclusive), milliseconds.
    #[avro(with = timestamp_millis)]
    pub window_end: i64,
    /// Index of this part when a large window is split.
    pub split_index: i32,
    /// Number of parts the window was split into.
    pub split_count: i32,
    /// Raw events aggregated into this window.
    pub event_count: i64,
    /// Arrow IPC stream of the `nodes` table.
    #[serde(with = "apache_avro::serde::bytes")]
    #[avro(with = apache_avro::serde::bytes::get_schema_in_ctxt)]
    pub nodes: Vec<u8>,
    /// Arrow IPC stream of the `edges` table.
    #[serde(with = "apache_avro::serde::bytes")]
    #[avro(with = apache_avro::serde::bytes::get_schema_in_ctxt)]
    pub edges: Vec<u8>,
    /// Arrow IPC stream of the `activity` table.
    #[serde(with = "apache_avro::serde::bytes")]
    #[avro(with = apache_avro::serde::bytes::get_schema_in_ctxt)]
    pub activity: Vec<u8>,
    /// Arrow IPC stream of the `kube_events` table (empty bytes: no Kubernetes Events).
    #[serde(default, with = "apache_avro::serde::bytes")]
    #[avro(with = apache_avro::serde::bytes::get_schema_in_ctxt, default = "\"\"")]
    pub kube_events: Vec<u8>,
}

/// Tactics of the Microsoft Threat Matrix for Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[avro(namespace = "io.korvid.v1")]
#[allow(missing_docs)] // variant docs are plain comments: the Avro derive refuses doc attributes on them
pub enum Tactic {
    // Getting into the cluster.
    InitialAccess,
    // Running code in the cluster.
    Execution,
    // Keeping access.
    Persistence,
    // Gaining higher privileges.
    PrivilegeEscalation,
    // Avoiding detection.
    DefenseEvasion,
    // Stealing credentials.
    CredentialAccess,
    // Learning about the environment.
    Discovery,
    // Moving through the environment.
    LateralMovement,
    // Gathering data (and bringing in untrusted images).
    Collection,
    // Destroying, hijacking or holding to ransom.
    Impact,
}

impl Tactic {
    /// Every tactic, in matrix order.
    pub const ALL: [Tactic; 10] = [
        Tactic::InitialAccess,
        Tactic::Execution,
        Tactic::Persistence,
        Tactic::PrivilegeEscalation,
        Tactic::DefenseEvasion,
        Tactic::CredentialAccess,
        Tactic::Discovery,
        Tactic::LateralMovement,
        Tactic::Collection,
        Tactic::Impact,
    ];

    /// The snake_case name used in rule files and config (`privilege_escalation`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tactic::InitialAccess => "initial_access",
            Tactic::Execution => "execution",
            Tactic::Persistence => "persistence",
            Tactic::PrivilegeEscalation => "privilege_escalation",
            Tactic::DefenseEvasion => "defense_evasion",
            Tactic::CredentialAccess => "credential_access",
            Tactic::Discovery => "discovery",
            Tactic::LateralMovement => "lateral_movement",
            Tactic::Collection => "collection",
            Tactic::Impact => "impact",
        }
    }

    /// The name as the threat matrix prints it (`Privilege Escalation`).
    pub fn display_name(self) -> &'static str {
        match self {
            Tactic::InitialAccess => "Initial Access",
            Tactic::Execution => "Execution",
            Tactic::Persistence => "Persistence",
            Tactic::PrivilegeEscalation => "Privilege Escalation",
            Tactic::DefenseEvasion => "Defense Evasion",
            Tactic::CredentialAccess => "Credential Access",
            Tactic::Discovery => "Discovery",
            Tactic::LateralMovement => "Lateral Movement",
            Tactic::Collection => "Collection",
            Tactic::Impact => "Impact",
        }
    }

    /// Parses snake_case, SCREAMING_SNAKE_CASE or the display name.
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        Tactic::ALL.into_iter().find(|t| t.as_str() == norm)
    }
}

/// The object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct Subject {
    /// Kind: Pod, User, ClusterRoleBinding, ...
    pub kind: String,
    /// Namespace, for namespaced objects.
    pub namespace: Option<String>,
    /// Name (for users, the username).
    pub name: String,
    /// uid, when known.
    pub uid: Option<String>,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// One named piece of proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct Evidence {
    /// What this is (`verb`, `target`, `count`, `audit_ids`, ...).
    pub name: String,
    /// Its value, as text.
    pub value: String,
}

/// Which half of detection raised a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[avro(namespace = "io.korvid.v1")]
#[allow(missing_docs)] // variant docs are plain comments: the Avro derive refuses doc attributes on them
pub enum Detector {
    // A SQL rule.
    Rule,
    // The graph model.
    Model,
    // A rule hit re-scored by the model.
    Fused,
}

/// One detection (`korvid.findings.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct Finding {
    /// Cluster id.
    pub cluster: String,
    /// End of the window the finding was raised in, milliseconds.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// Deterministic id (detector, rule/model, subject, window).
    pub id: String,
    /// Dedup key (tactic, rule/model, subject, cluster).
    pub fingerprint: String,
    /// The window it was raised in.
    pub window_id: String,
    /// When detect produced it, milliseconds.
    #[avro(with = timestamp_millis)]
    pub detected_at: i64,
    /// Rule, model or both.
    pub detector: Detector,
    /// Rule id (`KOR-0001`).
    pub rule_id: Option<String>,
    /// Model version.
    pub model_version: Option<String>,
    /// Confidence in [0, 1].
    pub score: f64,
    /// One-line title.
    pub title: String,
    /// Threat-matrix tactic.
    pub tactic: Tactic,
    /// MITRE ATT&CK technique ids.
    pub techniques: Vec<String>,
    /// Severity.
    pub severity: Severity,
    /// What it is about.
    pub subject: Subject,
    /// What proves it.
    pub evidence: Vec<Evidence>,
    /// Why it matters.
    pub implication: String,
    /// How to fix it now.
    pub remediation: String,
    /// How to prevent it.
    pub prevention: String,
    /// Further reading.
    pub references: Vec<String>,
}

/// Whether an alert is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[avro(namespace = "io.korvid.v1")]
#[allow(missing_docs)] // variant docs are plain comments: the Avro derive refuses doc attributes on them
pub enum AlertStatus {
    // Findings keep arriving.
    Firing,
    // Quiet long enough to be considered over.
    Resolved,
}

/// What notify sent for one fingerprint (`korvid.alerts.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct Alert {
    /// Cluster id.
    pub cluster: String,
    /// When it was notified, milliseconds.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// Fingerprint plus first-seen time.
    pub id: String,
    /// Dedup key.
    pub fingerprint: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// One-line title.
    pub title: String,
    /// Threat-matrix tactic.
    pub tactic: Tactic,
    /// MITRE ATT&CK technique ids.
    pub techniques: Vec<String>,
    /// Severity.
    pub severity: Severity,
    /// What it is about.
    pub subject: Subject,
    /// Rule, model or both.
    pub detector: Detector,
    /// Rule id.
    pub rule_id: Option<String>,
    /// Model version.
    pub model_version: Option<String>,
    /// Highest score seen.
    pub score: f64,
    /// Findings folded into this notification.
    pub finding_ids: Vec<String>,
    /// Findings folded into the alert so far.
    pub occurrences: i64,
    /// First finding, milliseconds.
    #[avro(with = timestamp_millis)]
    pub first_seen: i64,
    /// Latest finding, milliseconds.
    #[avro(with = timestamp_millis)]
    pub last_seen: i64,
    /// What proves it (from the latest finding).
    pub evidence: Vec<Evidence>,
    /// Why it matters.
    pub implication: String,
    /// How to fix it now.
    pub remediation: String,
    /// How to prevent it.
    pub prevention: String,
    /// Further reading.
    pub references: Vec<String>,
}

/// Input a stage could not process (`korvid.deadletter.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct DeadLetter {
    /// Cluster id, when the stage could tell.
    pub cluster: Option<String>,
    /// When it was rejected, milliseconds.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// The component that rejected it (`ingest.audit_webhook`).
    pub stage: String,
    /// Human-readable reason.
    pub error: String,
    /// Stable error class.
    pub error_kind: String,
    /// Topic it was read from.
    pub source_topic: Option<String>,
    /// Partition it was read from.
    pub source_partition: Option<i32>,
    /// Offset it was read from.
    pub source_offset: Option<i64>,
    /// The raw input (possibly truncated).
    #[serde(with = "apache_avro::serde::bytes")]
    #[avro(with = apache_avro::serde::bytes::get_schema_in_ctxt)]
    pub payload: Vec<u8>,
    /// Whether `payload` was cut short.
    pub payload_truncated: bool,
}

/// Notify's memory of one fingerprint (`korvid.notify.state.v1`, compacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.korvid.v1")]
pub struct DedupState {
    /// Cluster id.
    pub cluster: String,
    /// When this state was written, milliseconds.
    #[avro(with = timestamp_millis)]
    pub event_time: i64,
    /// The fingerprint.
    pub fingerprint: String,
    /// Id of the current alert episode.
    pub alert_id: String,
    /// First finding, milliseconds.
    #[avro(with = timestamp_millis)]
    pub first_seen: i64,
    /// Latest finding, milliseconds.
    #[avro(with = timestamp_millis)]
    pub last_seen: i64,
    /// Last notification, milliseconds.
    #[avro(with = timestamp_millis)]
    pub last_notified: i64,
    /// Findings folded in so far.
    pub occurrences: i64,
    /// Latest finding ids folded in.
    pub recent_finding_ids: Vec<String>,
    /// The findings partition the fingerprint lives in: the notify instance owning that
    /// partition owns this state.
    #[serde(default)]
    pub partition: Option<i32>,
    /// What was last notified for this episode: `firing`, or `muted` (silenced or inhibited);
    /// absent while it waits for its group's first notification.
    #[serde(default)]
    pub notified_status: Option<String>,
    /// The latest finding folded in, as JSON, to render the alert on repeats and resolution.
    #[serde(default)]
    pub latest_finding: Option<String>,
}
