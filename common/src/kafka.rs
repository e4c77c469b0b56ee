//! Kafka clients with korvid's delivery guarantees.
//!
//! - [`RecordProducer`]: idempotent (`enable.idempotence`), `acks=all`, Avro-framed values; a full
//!   local queue makes `send` wait instead of failing (backpressure).
//! - [`AtLeastOnceConsumer`]: auto-commit on, auto offset *store* off. A service stores an offset
//!   only after everything it produced for that message is acknowledged; stored offsets are
//!   committed synchronously on revoke and on shutdown.
//! - [`DeadLetters`]: what a stage cannot process goes to the dead-letter topic with the reason.
//! - [`RecordDecoder`]: decodes either framing, fetching unknown registry ids on demand.
//!
//! Nothing here uses Kafka transactions: correctness rests on at-least-once delivery plus
//! deterministic ids downstream, which works on any Kafka-protocol broker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use korvid_schemas::DeadLetter;
use korvid_schemas::codec::{CodecError, Decoder, Framing, Record, encode};
use korvid_schemas::registry::{RegistryAuth, SchemaRegistryClient};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, TopicPartitionList};
use serde::Deserialize;

use crate::settings::{SettingsError, Validate, require_non_empty, require_range};
use crate::telemetry::Telemetry;

mod group_watch;

/// librdkafka properties that `[kafka.client]` may not set, and why: korvid's delivery
/// guarantees rest on them, or a dedicated setting owns them. Every other property in
/// `[kafka.client]` overrides korvid's default for it.
const MANAGED_CLIENT_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers"),
    ("group.id", "set kafka.group_prefix"),
    ("message.timeout.ms", "set kafka.produce_timeout_ms"),
    (
        "enable.auto.offset.store",
        "offsets move only once outputs are safe",
    ),
    (
        "enable.auto.commit",
        "offsets move only once outputs are safe",
    ),
    (
        "enable.idempotence",
        "producers are idempotent, so retries add no duplicates",
    ),
    (
        "acks",
        "every in-sync replica acknowledges a record before korvid counts it stored",
    ),
    (
        "enable.partition.eof",
        "consumers run without end-of-partition events",
    ),
];

/// Sets `key` unless the user's `[kafka.client]` already did.
fn default(cfg: &mut ClientConfig, key: &str, value: &str) {
    if cfg.get(key).is_none() {
        cfg.set(key, value);
    }
}

/// `[kafka]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Brokers, e.g. `kafka-1:9092,kafka-2:9092`. Unset: `korvid up` starts the local broker.
    pub bootstrap_servers: Option<String>,
    /// Prefix of every topic name (`korvid` gives `korvid.k8s.audit.v1`).
    pub topic_prefix: String,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Partitions for topics korvid creates.
    pub partitions: i32,
    /// Replication factor for topics korvid creates.
    pub replication_factor: i32,
    /// Prefix of consumer group ids (`korvid` gives `korvid-enrich`).
    pub group_prefix: String,
    /// How to authenticate and encrypt (`[kafka.security]`).
    pub security: KafkaSecurity,
    /// Extra librdkafka properties for every client (tuning: they override korvid's defaults,
    /// e.g. `linger.ms`; security belongs in `security`; `MANAGED_CLIENT_KEYS` are refused).
    pub client: BTreeMap<String, String>,
    /// Static group membership: librdkafka's `group.instance.id` for this process's group
    /// consumers, unique per instance (a pod's name), so a restarted instance gets its
    /// partitions back without a rebalance. Its own key because `[kafka.client]` keys contain
    /// dots, which `KORVID__` variables cannot spell. Unset: dynamic membership.
    pub group_instance_id: Option<String>,
    /// Confluent Schema Registry URL. Unset: Avro single-object encoding.
    pub schema_registry_url: Option<String>,
    /// Schema Registry basic-auth user.
    pub schema_registry_username: Option<String>,
    /// Schema Registry basic-auth password.
    pub schema_registry_password: Option<String>,
    /// Dead letters keep at most this many bytes of the rejected input.
    pub deadletter_max_payload_bytes: usize,
    /// How long a produce may take before it fails (librdkafka `message.timeout.ms`).
    pub produce_timeout_ms: u64,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: None,
            topic_prefix: "korvid".into(),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            group_prefix: "korvid".into(),
            security: KafkaSecurity::default(),
            client: BTreeMap::new(),
            group_instance_id: None,
            schema_registry_url: None,
            schema_registry_username: None,
            schema_registry_password: None,
            deadletter_max_payload_bytes: 1 << 20,
            produce_timeout_ms: 60_000,
        }
    }
}

/// `kafka.security.protocol`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the embedded broker, a trusted network).
    #[default]
    Plaintext,
    /// TLS, optionally with a client certificate (mutual TLS).
    Ssl,
    /// SASL authentication without TLS (credentials in the clear: PLAIN only on trusted links).
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `kafka.security.sasl_mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// Username and password as they are (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `[kafka.security]`: TLS and SASL for an existing cluster, turned into librdkafka properties.
///
/// Secrets can stay out of the file: `password_file` (a mounted Kubernetes Secret) or the
/// environment (`KORVID__KAFKA__SECURITY__PASSWORD`). `Debug` never shows them.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (SASL protocols only).
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    pub username: Option<String>,
    /// SASL password (prefer `password_file` or the environment).
    pub password: Option<String>,
    /// File holding the SASL password (trailing newline ignored).
    pub password_file: Option<std::path::PathBuf>,
    /// PEM CA bundle to verify the brokers with. Unset: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// Check that the broker's certificate names the host connected to (default on).
    pub verify_hostname: Option<bool>,
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("verify_hostname", &self.verify_hostname)
            .finish()
    }
}

impl KafkaSecurity {
    fn validate(&self) -> Result<(), SettingsError> {
        let p = self.protocol;
        if p.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                return Err(SettingsError::invalid(
                    "kafka.security.sasl_mechanism",
                    "is required with a SASL protocol (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                ));
            }
            require_non_empty(
                "kafka.security.username",
                self.username.as_deref().unwrap_or(""),
            )?;
            if self.password.is_some() == self.password_file.is_some() {
                return Err(SettingsError::invalid(
                    "kafka.security.password",
                    "give exactly one of password and password_file",
                ));
            }
        } else if self.sasl_mechanism.is_some() || self.username.is_some() {
            return Err(SettingsError::invalid(
                "kafka.security.protocol",
                format!(
                    "is `{}`, which does not use SASL; choose sasl_ssl or sasl_plaintext",
                    p.as_str()
                ),
            ));
        }
        if !p.uses_tls()
            && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some())
        {
            return Err(SettingsError::invalid(
                "kafka.security.protocol",
                format!(
                    "is `{}`, which does not use TLS; choose ssl or sasl_ssl",
                    p.as_str()
                ),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(SettingsError::invalid(
                "kafka.security.key_file",
                "cert_file and key_file go together",
            ));
        }
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|e| {
                    SettingsError::invalid(
                        format!("kafka.security.{key}"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
            }
        }
        self.properties().map(drop)
    }

    /// The librdkafka properties these settings stand for.
    pub fn properties(&self) -> Result<Vec<(&'static str, String)>, SettingsError> {
        let p = self.protocol;
        let mut out = vec![("security.protocol", p.as_str().to_string())];
        if p.uses_sasl() {
            let password = match (&self.password, &self.password_file) {
                (Some(pw), _) => pw.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| {
                        SettingsError::invalid(
                            "kafka.security.password_file",
                            format!("{}: {e}", path.display()),
                        )
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
                (None, None) => String::new(),
            };
            if let Some(m) = self.sasl_mechanism {
                out.push(("sasl.mechanisms", m.as_str().to_string()));
            }
            out.push(("sasl.username", self.username.clone().unwrap_or_default()));
            out.push(("sasl.password", password));
        }
        if p.uses_tls() {
            let path = |p: &std::path::Path| p.display().to_string();
            if let Some(ca) = &self.ca_file {
                out.push(("ssl.ca.location", path(ca)));
            }
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                out.push(("ssl.certificate.location", path(cert)));
                out.push(("ssl.key.location", path(key)));
            }
            let verify = self.verify_hostname.unwrap_or(true);
            out.push((
                "ssl.endpoint.identification.algorithm",
                if verify { "https" } else { "none" }.to_string(),
            ));
        }
        Ok(out)
    }
}

impl Validate for KafkaSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if let Some(b) = &self.bootstrap_servers {
            require_non_empty("kafka.bootstrap_servers", b)?;
            for server in b.split(',') {
                if !server.trim().contains(':') {
                    return Err(SettingsError::invalid(
                        "kafka.bootstrap_servers",
                        format!("`{server}` is not host:port"),
                    ));
                }
            }
        }
        require_non_empty("kafka.topic_prefix", &self.topic_prefix)?;
        if !self
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(SettingsError::invalid(
                "kafka.topic_prefix",
                "may contain only ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        require_non_empty("kafka.group_prefix", &self.group_prefix)?;
        require_range("kafka.partitions", self.partitions, 1, 10_000)?;
        require_range("kafka.replication_factor", self.replication_factor, 1, 16)?;
        require_range(
            "kafka.produce_timeout_ms",
            self.produce_timeout_ms,
            100,
            3_600_000,
        )?;
        for (key, why) in MANAGED_CLIENT_KEYS {
            if self.client.contains_key(*key) {
                return Err(SettingsError::invalid(
                    format!("kafka.client.{key}"),
                    format!("is managed by korvid: {why}"),
                ));
            }
        }
        if let Some(id) = &self.group_instance_id {
            require_group_instance_id(id)?;
            if self.client.contains_key("group.instance.id") {
                return Err(SettingsError::invalid(
                    "kafka.group_instance_id",
                    "conflicts with kafka.client.\"group.instance.id\"; set it in one place",
                ));
            }
        }
        self.security.validate()?;
        if self.security.protocol != SecurityProtocol::Plaintext
            && let Some(key) = self.client.keys().find(|k| {
                k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.")
            })
        {
            return Err(SettingsError::invalid(
                format!("kafka.client.{key}"),
                "conflicts with [kafka.security]; set security in one place",
            ));
        }
        if let Some(url) = &self.schema_registry_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SettingsError::invalid(
                "kafka.schema_registry_url",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(())
    }
}

/// Kafka's rule for `group.instance.id` (as for topic names): 1 to 249 of `[a-zA-Z0-9._-]`, not
/// `.` or `..`. A pod name always fits; `$(POD_NAME)` left unexpanded (the variable not defined
/// before it in the pod's `env`) does not, and is refused at start rather than by the broker.
fn require_group_instance_id(id: &str) -> Result<(), SettingsError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > 249 || !id.chars().all(legal) || id == "." || id == ".." {
        return Err(SettingsError::invalid(
            "kafka.group_instance_id",
            format!("`{id}` is not 1 to 249 of ASCII letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// Topic names, derived from the prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Object changes (compacted).
    pub objects: String,
    /// Audit events.
    pub audit: String,
    /// Kubernetes Events.
    pub events: String,
    /// Image scans (compacted).
    pub scans: String,
    /// Graph windows.
    pub windows: String,
    /// Findings.
    pub findings: String,
    /// Alerts.
    pub alerts: String,
    /// Notify's dedup state (compacted).
    pub notify_state: String,
    /// Dead letters.
    pub deadletter: String,
}

impl Topics {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        let t = |s: &str| format!("{prefix}.{s}");
        Topics {
            objects: t("k8s.objects.v1"),
            audit: t("k8s.audit.v1"),
            events: t("k8s.events.v1"),
            scans: t("image.scans.v1"),
            windows: t("graph.windows.v1"),
            findings: t("findings.v1"),
            alerts: t("alerts.v1"),
            notify_state: t("notify.state.v1"),
            deadletter: t("deadletter.v1"),
        }
    }

    /// Every topic with whether it is compacted.
    pub fn all(&self) -> Vec<(&str, bool)> {
        vec![
            (&self.objects, true),
            (&self.audit, false),
            (&self.events, false),
            (&self.scans, true),
            (&self.windows, false),
            (&self.findings, false),
            (&self.alerts, false),
            (&self.notify_state, true),
            (&self.deadletter, false),
        ]
    }
}

/// A Kafka operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    /// librdkafka refused or failed an operation.
    #[error("kafka {op} failed: {source}")]
    Kafka {
        /// What was attempted.
        op: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The value could not be encoded (a bug) or decoded (bad input).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The Schema Registry failed.
    #[error(transparent)]
    Registry(#[from] korvid_schemas::registry::RegistryError),
    /// Reading a topic to its end did not finish in time.
    #[error("reading {topic} to its end took longer than {waited:?}")]
    ReadTimeout {
        /// Topic.
        topic: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A blocking helper task died.
    #[error("kafka helper task failed: {0}")]
    Task(String),
    /// The broker did not answer in time.
    #[error("no Kafka broker answered at {bootstrap} within {waited:?}: {last_error}")]
    Unreachable {
        /// Bootstrap servers tried.
        bootstrap: String,
        /// How long we waited.
        waited: Duration,
        /// The last error seen.
        last_error: String,
    },
}

fn kafka(op: &'static str) -> impl FnOnce(KafkaError) -> KafkaClientError {
    move |source| KafkaClientError::Kafka { op, source }
}

/// How often librdkafka reports a consumer's statistics (its lag among them).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Kafka client counters.
#[derive(Clone)]
struct KafkaMetrics {
    produced: Family<Vec<(String, String)>, Counter>,
    produce_errors: Family<Vec<(String, String)>, Counter>,
    deadletters: Family<Vec<(String, String)>, Counter>,
    /// Messages not yet committed, by consumer group and topic.
    consumer_lag: Family<Vec<(String, String)>, Gauge>,
    /// Times a consumer left and rejoined a group that had left it short of its partitions.
    group_rejoins: Family<Vec<(String, String)>, Counter>,
    /// Per-topic counters looked up without allocating: (produced, errors).
    by_topic: Arc<std::sync::RwLock<std::collections::HashMap<String, (Counter, Counter)>>>,
}

impl KafkaMetrics {
    fn topic_counters(&self, topic: &str) -> (Counter, Counter) {
        if let Some(c) = self
            .by_topic
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
        {
            return c.clone();
        }
        let label = vec![("topic".to_string(), topic.to_string())];
        let pair = (
            self.produced.get_or_create(&label).clone(),
            self.produce_errors.get_or_create(&label).clone(),
        );
        self.by_topic
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_string(), pair.clone());
        pair
    }

    fn count_produced(&self, topic: &str) {
        self.topic_counters(topic).0.inc();
    }

    fn count_produce_error(&self, topic: &str) {
        self.topic_counters(topic).1.inc();
    }
}

/// Kafka connection details shared by every service in the process.
#[derive(Clone)]
pub struct KafkaContext {
    /// The settings.
    pub settings: Arc<KafkaSettings>,
    /// Resolved bootstrap servers.
    pub bootstrap: String,
    /// Topic names.
    pub topics: Topics,
    registry: Option<Arc<SchemaRegistryClient>>,
    schema_ids: Arc<Mutex<BTreeMap<String, u32>>>,
    metrics: KafkaMetrics,
}

impl KafkaContext {
    /// A context for `bootstrap` (settings' own value, or the local broker's address).
    pub fn new(settings: KafkaSettings, bootstrap: String, telemetry: &Telemetry) -> Self {
        let registry = settings.schema_registry_url.as_ref().map(|url| {
            let auth = settings
                .schema_registry_username
                .as_ref()
                .map(|u| RegistryAuth {
                    username: u.clone(),
                    password: settings
                        .schema_registry_password
                        .clone()
                        .unwrap_or_default(),
                });
            Arc::new(SchemaRegistryClient::new(url, auth))
        });
        let metrics = KafkaMetrics {
            produced: telemetry.register(
                "kafka_produced",
                "Records acknowledged by Kafka, by topic",
                Family::default(),
            ),
            produce_errors: telemetry.register(
                "kafka_produce_errors",
                "Records Kafka did not acknowledge, by topic",
                Family::default(),
            ),
            deadletters: telemetry.register(
                "deadletters",
                "Inputs sent to the dead-letter topic, by stage and error kind",
                Family::default(),
            ),
            consumer_lag: telemetry.register(
                "kafka_consumer_lag",
                "Messages behind the partitions' ends (from the committed offsets), summed over \
                 the partitions this instance is assigned, by consumer group and topic",
                Family::default(),
            ),
            group_rejoins: telemetry.register(
                "kafka_group_rejoins",
                "Times a consumer left and rejoined its group because the group was stable but it \
                 owned less than its share of the partitions (a broker-side coordinator fault), by \
                 consumer group",
                Family::default(),
            ),
            by_topic: Arc::default(),
        };
        KafkaContext {
            topics: Topics::new(&settings.topic_prefix),
            settings: Arc::new(settings),
            bootstrap,
            registry,
            schema_ids: Arc::new(Mutex::new(BTreeMap::new())),
            metrics,
        }
    }

    /// Base client configuration: bootstrap, security and the user's `[kafka.client]`
    /// properties. Each kind of client adds its own defaults below those properties
    /// ([`default`]), and the managed ones over them ([`MANAGED_CLIENT_KEYS`]).
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap);
        match self.settings.security.properties() {
            Ok(props) => {
                for (k, v) in props {
                    cfg.set(k, v);
                }
            }
            // Checked at start; a secret file removed since then fails authentication, loudly.
            Err(e) => tracing::error!(error = %e, "Kafka security settings unusable"),
        }
        for (k, v) in &self.settings.client {
            cfg.set(k, v);
        }
        cfg
    }

    /// Group id for a service (`korvid-enrich`).
    pub fn group_id(&self, service: &str) -> String {
        format!("{}-{}", self.settings.group_prefix, service)
    }

    /// Waits until a broker answers a metadata request.
    pub async fn wait_for_broker(&self, timeout: Duration) -> Result<(), KafkaClientError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(kafka("create admin client"))?;
        let start = std::time::Instant::now();
        let mut last_error = String::new();
        while start.elapsed() < timeout {
            let client = admin.inner();
            let probe = tokio::task::block_in_place(|| {
                client.fetch_metadata(None, Timeout::After(Duration::from_millis(1000)))
            });
            match probe {
                Ok(md) if !md.brokers().is_empty() => return Ok(()),
                Ok(_) => last_error = "metadata listed no brokers".into(),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(KafkaClientError::Unreachable {
            bootstrap: self.bootstrap.clone(),
            waited: timeout,
            last_error,
        })
    }

    /// Creates every korvid topic that does not exist yet (compacted where the contract says so).
    pub async fn ensure_topics(&self) -> Result<(), KafkaClientError> {
        if !self.settings.create_topics {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(kafka("create admin client"))?;
        let all = self.topics.all();
        let specs: Vec<NewTopic<'_>> = all
            .iter()
            .map(|(name, compacted)| {
                let t = NewTopic::new(
                    name,
                    self.settings.partitions,
                    TopicReplication::Fixed(self.settings.replication_factor),
                );
                if *compacted {
                    t.set("cleanup.policy", "compact")
                } else {
                    t
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(specs.iter(), &opts)
            .await
            .map_err(kafka("create topics"))?;
        for r in results {
            match r {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    tracing::error!(topic = %name, ?code, "topic creation failed");
                    return Err(KafkaClientError::Kafka {
                        op: "create topic",
                        source: KafkaError::AdminOp(code),
                    });
                }
            }
        }
        Ok(())
    }

    /// The framing for a record: Confluent with the registry id when a registry is configured.
    pub async fn framing<R: Record>(&self, topic: &str) -> Result<Framing, KafkaClientError> {
        let Some(registry) = &self.registry else {
            return Ok(Framing::SingleObject);
        };
        // TopicNameStrategy: one subject per topic.
        let subject = format!("{topic}-value");
        if let Some(id) = lock(&self.schema_ids).get(&subject) {
            return Ok(Framing::Confluent { schema_id: *id });
        }
        let id = registry.register(&subject, R::AVSC).await?;
        lock(&self.schema_ids).insert(subject, id);
        Ok(Framing::Confluent { schema_id: id })
    }

    /// An idempotent producer.
    pub fn producer(&self) -> Result<RecordProducer, KafkaClientError> {
        let producer: FutureProducer = self
            .producer_config()
            .create()
            .map_err(kafka("create producer"))?;
        Ok(RecordProducer {
            producer,
            ctx: self.clone(),
        })
    }

    /// The configuration of a producer: idempotent, every in-sync replica acknowledging.
    fn producer_config(&self) -> ClientConfig {
        let mut cfg = self.client_config();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.settings.produce_timeout_ms.to_string(),
            );
        default(&mut cfg, "linger.ms", "5");
        default(&mut cfg, "compression.type", "lz4");
        cfg
    }

    /// An at-least-once consumer in `group`, subscribed to `topics`.
    pub fn consumer(
        &self,
        group: &str,
        topics: &[&str],
    ) -> Result<AtLeastOnceConsumer, KafkaClientError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (assigned_tx, assigned_rx) = std::sync::mpsc::channel();
        let consumer: StreamConsumer<RebalanceContext> = self
            .consumer_config(group)
            .create_with_context(RebalanceContext {
                revoked: tx,
                assigned: assigned_tx,
                group: group.to_string(),
                lag: self.metrics.consumer_lag.clone(),
            })
            .map_err(kafka("create consumer"))?;
        consumer.subscribe(topics).map_err(kafka("subscribe"))?;
        let consumer = Arc::new(consumer);
        group_watch::spawn(
            Arc::downgrade(&consumer),
            group,
            topics,
            self.metrics
                .group_rejoins
                .get_or_create(&vec![("group".into(), group.to_string())])
                .clone(),
        );
        Ok(AtLeastOnceConsumer {
            consumer,
            revoked: Mutex::new(rx),
            assigned: Mutex::new(assigned_rx),
        })
    }

    /// The configuration of a group consumer: at-least-once offsets, and static membership when
    /// `kafka.group_instance_id` is set (only group consumers join a group; producers and the
    /// followers, which assign partitions themselves, never take it).
    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut cfg = self.client_config();
        if let Some(id) = &self.settings.group_instance_id {
            cfg.set("group.instance.id", id);
        }
        cfg.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        default(&mut cfg, "auto.commit.interval.ms", "1000");
        default(&mut cfg, "auto.offset.reset", "earliest");
        default(&mut cfg, "session.timeout.ms", "10000");
        // Alerts are latency-sensitive and volumes per hop are modest: do not let an idle fetch
        // sit at the broker for librdkafka's default 500 ms.
        default(&mut cfg, "fetch.wait.max.ms", "100");
        // Statistics carry each partition's lag (RebalanceContext::stats).
        default(&mut cfg, "statistics.interval.ms", STATISTICS_INTERVAL_MS);
        cfg
    }

    /// A decoder for values of `R`, fetching unknown registry ids when a registry is configured.
    pub fn decoder<R: Record>(&self) -> RecordDecoder<R> {
        RecordDecoder {
            decoder: Decoder::new(),
            registry: self.registry.clone(),
        }
    }

    /// Follows whole topics like a global table: every partition from the beginning, then new
    /// records as they come, with one [`FeedEvent::CaughtUp`] once the high watermarks seen at
    /// the start are reached. No offsets are committed (each follower reads everything). The
    /// follower thread stops when the receiver is dropped.
    pub fn follow(
        &self,
        topics: &[&str],
    ) -> Result<tokio::sync::mpsc::Receiver<FeedEvent>, KafkaClientError> {
        let mut cfg = self.client_config();
        cfg.set(
            "group.id",
            format!("{}-follower", self.settings.group_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
        default(&mut cfg, "fetch.wait.max.ms", "100");
        let consumer: BaseConsumer = cfg.create().map_err(kafka("create follower"))?;
        let timeout = Timeout::After(Duration::from_secs(10));
        let mut tpl = TopicPartitionList::new();
        let mut remaining: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for topic in topics {
            let md = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(kafka("fetch metadata"))?;
            for t in md.topics() {
                for p in t.partitions() {
                    let (low, high) = consumer
                        .fetch_watermarks(topic, p.id(), timeout)
                        .map_err(kafka("fetch watermarks"))?;
                    tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                        .map_err(kafka("assign"))?;
                    if high > low {
                        remaining.insert((topic.to_string(), p.id()), high);
                    }
                }
            }
        }
        consumer.assign(&tpl).map_err(kafka("assign"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        std::thread::Builder::new()
            .name("korvid-follow".into())
            .spawn(move || {
                let mut caught_up = remaining.is_empty();
                if caught_up && tx.blocking_send(FeedEvent::CaughtUp).is_err() {
                    return;
                }
                while !tx.is_closed() {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            let record = FeedRecord {
                                topic: m.topic().to_string(),
                                key: m.key().map(<[u8]>::to_vec),
                                value: m.payload().map(<[u8]>::to_vec),
                            };
                            let at = (m.topic().to_string(), m.partition());
                            if remaining
                                .get(&at)
                                .is_some_and(|high| m.offset() + 1 >= *high)
                            {
                                remaining.remove(&at);
                            }
                            if tx.blocking_send(FeedEvent::Record(record)).is_err() {
                                return;
                            }
                            if !caught_up && remaining.is_empty() {
                                caught_up = true;
                                if tx.blocking_send(FeedEvent::CaughtUp).is_err() {
                                    return;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "following a topic: fetch failed; retrying")
                        }
                        None => {}
                    }
                }
            })
            .map_err(|e| KafkaClientError::Task(e.to_string()))?;
        Ok(rx)
    }

    /// Reads every record currently in `topic` (all partitions, beginning to the high
    /// watermark), e.g. to rebuild state from a compacted topic. Returns (key, value) pairs;
    /// tombstones have no value.
    pub async fn read_to_end(
        &self,
        topic: &str,
    ) -> Result<Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>, KafkaClientError> {
        let mut cfg = self.client_config();
        cfg.set("group.id", format!("{}-reader", self.settings.group_prefix))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || -> Result<_, KafkaClientError> {
            let consumer: BaseConsumer = cfg.create().map_err(kafka("create reader"))?;
            let timeout = Timeout::After(Duration::from_secs(10));
            let md = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(kafka("fetch metadata"))?;
            let mut tpl = TopicPartitionList::new();
            let mut remaining = BTreeMap::new();
            for t in md.topics() {
                for p in t.partitions() {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p.id(), timeout)
                        .map_err(kafka("fetch watermarks"))?;
                    if high > low {
                        tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)
                            .map_err(kafka("assign"))?;
                        remaining.insert(p.id(), high);
                    }
                }
            }
            let mut out = Vec::new();
            if remaining.is_empty() {
                return Ok(out);
            }
            consumer.assign(&tpl).map_err(kafka("assign"))?;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !remaining.is_empty() {
                if std::time::Instant::now() > deadline {
                    return Err(KafkaClientError::ReadTimeout {
                        topic: topic.clone(),
                        waited: Duration::from_secs(120),
                    });
                }
                let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let msg = msg.map_err(kafka("read"))?;
                out.push((
                    msg.key().map(<[u8]>::to_vec),
                    msg.payload().map(<[u8]>::to_vec),
                ));
                if let Some(high) = remaining.get(&msg.partition())
                    && msg.offset() + 1 >= *high
                {
                    remaining.remove(&msg.partition());
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| KafkaClientError::Task(e.to_string()))?
    }

    /// A dead-letter producer for `stage`.
    pub fn dead_letters(&self, producer: RecordProducer) -> DeadLetters {
        DeadLetters { producer }
    }
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// An idempotent producer of korvid records.
#[derive(Clone)]
pub struct RecordProducer {
    producer: FutureProducer,
    ctx: KafkaContext,
}

impl RecordProducer {
    /// Encodes and sends a record; resolves once Kafka acknowledged it.
    pub async fn send<R: Record>(
        &self,
        topic: &str,
        key: &str,
        record: &R,
    ) -> Result<Delivered, KafkaClientError> {
        let framing = self.ctx.framing::<R>(topic).await?;
        let bytes = encode(record, framing)?;
        self.send_bytes(topic, Some(key.as_bytes()), Some(&bytes))
            .await
    }

    /// Sends a tombstone (null value) for `key` on a compacted topic.
    pub async fn tombstone(&self, topic: &str, key: &str) -> Result<Delivered, KafkaClientError> {
        self.send_bytes(topic, Some(key.as_bytes()), None).await
    }

    /// Sends raw bytes; resolves once Kafka acknowledged them.
    pub async fn send_bytes(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<Delivered, KafkaClientError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(h) = trace_headers() {
            record = record.headers(h);
        }
        // Timeout::Never: a full local queue means wait (backpressure), never drop.
        match self.producer.send(record, Timeout::Never).await {
            Ok(d) => {
                self.ctx.metrics.count_produced(topic);
                Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((e, _)) => {
                self.ctx.metrics.count_produce_error(topic);
                Err(KafkaClientError::Kafka {
                    op: "produce",
                    source: e,
                })
            }
        }
    }

    /// Encodes a record and puts it on the producer's queue *now*, returning a handle that
    /// resolves once Kafka acknowledged it.
    ///
    /// Unlike [`send`](Self::send), the record is queued when this returns, so records queued one
    /// after another keep their order per partition while many are in flight; a full local queue
    /// waits (backpressure), never drops.
    pub async fn enqueue<R: Record>(
        &self,
        topic: &str,
        key: &str,
        record: &R,
    ) -> Result<PendingDelivery, KafkaClientError> {
        let framing = self.ctx.framing::<R>(topic).await?;
        let bytes = encode(record, framing)?;
        self.enqueue_bytes(topic, Some(key.as_bytes()), Some(&bytes))
            .await
    }

    /// Queues a tombstone for `key`, like [`enqueue`](Self::enqueue).
    pub async fn enqueue_tombstone(
        &self,
        topic: &str,
        key: &str,
    ) -> Result<PendingDelivery, KafkaClientError> {
        self.enqueue_bytes(topic, Some(key.as_bytes()), None).await
    }

    async fn enqueue_bytes(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<PendingDelivery, KafkaClientError> {
        let trace = trace_headers();
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if let Some(h) = &trace {
                record = record.headers(h.clone());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    return Ok(PendingDelivery {
                        delivery,
                        topic: topic.to_string(),
                        ctx: self.ctx.clone(),
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    self.ctx.metrics.count_produce_error(topic);
                    return Err(KafkaClientError::Kafka {
                        op: "produce",
                        source: e,
                    });
                }
            }
        }
    }

    /// Waits for every in-flight record to be acknowledged (at most `timeout`).
    ///
    /// Blocks the calling thread; inside the runtime it hands its worker slot to another thread
    /// first, so timers and other tasks keep running. Needs the multi-threaded runtime.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaClientError> {
        tokio::task::block_in_place(|| self.producer.flush(timeout)).map_err(kafka("flush"))
    }
}

/// The `traceparent` header of the current span, when it is traced (see
/// [`crate::trace_context`]).
fn trace_headers() -> Option<OwnedHeaders> {
    let tp = crate::trace_context::current()?;
    Some(OwnedHeaders::new_with_capacity(1).insert(Header {
        key: crate::trace_context::HEADER,
        value: Some(tp.as_bytes()),
    }))
}

/// What a topic follower ([`KafkaContext::follow`]) hands over.
#[derive(Debug)]
pub enum FeedEvent {
    /// One record, in partition order.
    Record(FeedRecord),
    /// Everything that was in the topics when following began has been handed over.
    CaughtUp,
}

/// One record of a followed topic.
#[derive(Debug)]
pub struct FeedRecord {
    /// Topic.
    pub topic: String,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (`None` for a tombstone).
    pub value: Option<Vec<u8>>,
}

/// A record on the producer's queue, not yet acknowledged.
pub struct PendingDelivery {
    delivery: rdkafka::producer::DeliveryFuture,
    topic: String,
    ctx: KafkaContext,
}

impl PendingDelivery {
    /// Resolves once Kafka acknowledged the record (or gave up on it).
    pub async fn acknowledged(self) -> Result<Delivered, KafkaClientError> {
        let result = match self.delivery.await {
            Ok(r) => r,
            // The producer was dropped with the record still queued.
            Err(_) => Err((
                KafkaError::Canceled,
                rdkafka::message::OwnedMessage::new(
                    None,
                    None,
                    self.topic.clone(),
                    rdkafka::Timestamp::NotAvailable,
                    0,
                    0,
                    None,
                ),
            )),
        };
        match result {
            Ok(d) => {
                self.ctx.metrics.count_produced(&self.topic);
                Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((e, _)) => {
                self.ctx.metrics.count_produce_error(&self.topic);
                Err(KafkaClientError::Kafka {
                    op: "produce",
                    source: e,
                })
            }
        }
    }
}

/// Where a rejected input came from.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSource {
    /// Cluster, when known.
    pub cluster: Option<String>,
    /// Source topic, for inputs read from Kafka.
    pub topic: Option<String>,
    /// Source partition.
    pub partition: Option<i32>,
    /// Source offset.
    pub offset: Option<i64>,
}

/// Sends rejected input to the dead-letter topic, counted by stage and error kind.
#[derive(Clone)]
pub struct DeadLetters {
    producer: RecordProducer,
}

impl DeadLetters {
    /// Records why `payload` was rejected. Resolves once Kafka has it.
    pub async fn send(
        &self,
        stage: &str,
        error_kind: &str,
        error: &str,
        payload: &[u8],
        source: DeadLetterSource,
    ) -> Result<(), KafkaClientError> {
        let ctx = &self.producer.ctx;
        let limit = ctx.settings.deadletter_max_payload_bytes;
        let truncated = payload.len() > limit;
        let record = DeadLetter {
            cluster: source.cluster,
            event_time: crate::now_millis(),
            stage: stage.to_string(),
            error: error.to_string(),
            error_kind: error_kind.to_string(),
            source_topic: source.topic,
            source_partition: source.partition,
            source_offset: source.offset,
            payload: payload[..payload.len().min(limit)].to_vec(),
            payload_truncated: truncated,
        };
        ctx.metrics
            .deadletters
            .get_or_create(&vec![
                ("stage".into(), stage.to_string()),
                ("kind".into(), error_kind.to_string()),
            ])
            .inc();
        tracing::warn!(
            stage,
            error_kind,
            error,
            "input sent to the dead-letter topic"
        );
        let topic = ctx.topics.deadletter.clone();
        self.producer.send(&topic, stage, &record).await.map(|_| ())
    }
}

/// Consumer context: commits stored offsets before partitions are taken away, tells the
/// service which partitions it lost, so it can drop state it will never complete, and turns
/// librdkafka's statistics into the consumer lag gauge.
pub struct RebalanceContext {
    revoked: std::sync::mpsc::Sender<Vec<(String, i32)>>,
    assigned: std::sync::mpsc::Sender<Vec<(String, i32)>>,
    group: String,
    lag: Family<Vec<(String, String)>, Gauge>,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, lag) in consumer_lag(&statistics) {
            self.lag
                .get_or_create(&vec![
                    ("group".into(), self.group.clone()),
                    ("topic".into(), topic),
                ])
                .set(lag);
        }
    }
}

/// Per topic, the lag summed over the partitions being fetched (assigned to this consumer);
/// partitions whose lag librdkafka does not know yet (-1: nothing committed) count as 0.
fn consumer_lag(statistics: &Statistics) -> Vec<(String, i64)> {
    statistics
        .topics
        .iter()
        .map(|(topic, t)| {
            let lag = t
                .partitions
                .values()
                .filter(|p| {
                    // -1 is librdkafka's internal unassigned partition.
                    p.partition >= 0
                        && !matches!(p.fetch_state.as_str(), "none" | "stopping" | "stopped")
                })
                .map(|p| p.consumer_lag.max(0))
                .sum();
            (topic.clone(), lag)
        })
        .collect()
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "commit on revoke failed"),
            }
            let parts = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect::<Vec<_>>();
            tracing::info!(partitions = parts.len(), "partitions revoked");
            let _ = self.revoked.send(parts);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            let parts = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect::<Vec<_>>();
            let _ = self.assigned.send(parts);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result
            && !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))
        {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

/// A consumed message copied out of the consumer, so processing can await freely.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Value (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// The producer's trace context (`traceparent` header), if it sent one.
    pub trace_parent: Option<String>,
}

impl Consumed {
    /// Where this message came from, for a dead letter.
    pub fn source(&self) -> DeadLetterSource {
        DeadLetterSource {
            cluster: None,
            topic: Some(self.topic.clone()),
            partition: Some(self.partition),
            offset: Some(self.offset),
        }
    }
}

/// A consumer whose offsets move only when the service says its outputs are safe. A thread
/// beside it checks that its group gives it its share of the partitions (`group_watch`).
pub struct AtLeastOnceConsumer {
    /// Shared with its group watch (`group_watch`), which holds it weakly.
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    revoked: Mutex<std::sync::mpsc::Receiver<Vec<(String, i32)>>>,
    assigned: Mutex<std::sync::mpsc::Receiver<Vec<(String, i32)>>>,
}

impl AtLeastOnceConsumer {
    /// Receives the next message.
    pub async fn recv(&self) -> Result<BorrowedMessage<'_>, KafkaClientError> {
        self.consumer.recv().await.map_err(kafka("consume"))
    }

    /// The next message, or `None` once shutdown has begun. Consume errors (a broker away for a
    /// moment) are logged and retried.
    pub async fn next(&self, shutdown: &crate::Shutdown) -> Option<Consumed> {
        loop {
            let msg = tokio::select! {
                biased;
                _ = shutdown.triggered() => return None,
                m = self.consumer.recv() => m,
            };
            match msg {
                Ok(m) => {
                    return Some(Consumed {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload().map(<[u8]>::to_vec),
                        trace_parent: m.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == crate::trace_context::HEADER)
                                .and_then(|h| h.value)
                                .and_then(|v| std::str::from_utf8(v).ok())
                                .map(str::to_string)
                        }),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Marks a consumed message (and everything before it in its partition) as fully processed.
    pub fn done(&self, msg: &Consumed) {
        if let Err(e) = self.store(&msg.topic, msg.partition, msg.offset) {
            tracing::warn!(error = %e, "storing an offset failed");
        }
    }

    /// Shutdown: commits what was stored and leaves the group.
    pub fn finish(self) {
        if let Err(e) = self.commit_now() {
            tracing::warn!(error = %e, "final commit failed; the next start re-reads from the last commit");
        }
        self.close();
    }

    /// Marks `offset` of `topic`/`partition` (and everything before it) as fully processed.
    pub fn store(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaClientError> {
        match self.consumer.store_offset(topic, partition, offset) {
            Ok(()) => Ok(()),
            // The partition was revoked meanwhile; its new owner re-reads from the last commit.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => Ok(()),
            Err(e) => Err(KafkaClientError::Kafka {
                op: "store offset",
                source: e,
            }),
        }
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        let rx = lock(&self.revoked);
        rx.try_iter().flatten().collect()
    }

    /// Partitions assigned since the last call (each assignment in full, as the broker gave
    /// it; a service keeping per-partition state adopts what it did not own before).
    pub fn take_assigned(&self) -> Vec<Vec<(String, i32)>> {
        let rx = lock(&self.assigned);
        rx.try_iter().collect()
    }

    /// Commits stored offsets synchronously (call on shutdown, after draining).
    ///
    /// Blocks while the broker answers (or not); like [`RecordProducer::flush`] it hands its
    /// worker slot over first, so a dead broker cannot stall the shutdown deadline.
    pub fn commit_now(&self) -> Result<(), KafkaClientError> {
        let result =
            tokio::task::block_in_place(|| self.consumer.commit_consumer_state(CommitMode::Sync));
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(KafkaClientError::Kafka {
                op: "commit",
                source: e,
            }),
        }
    }

    /// Leaves the group (blocking while the broker answers, off the worker slot).
    pub fn close(self) {
        tokio::task::block_in_place(move || {
            self.consumer.unsubscribe();
            drop(self);
        });
    }
}

/// Decodes values of one record type, whatever framing or schema version wrote them.
pub struct RecordDecoder<R: Record> {
    decoder: Decoder<R>,
    registry: Option<Arc<SchemaRegistryClient>>,
}

impl<R: Record> RecordDecoder<R> {
    /// Decodes a value, fetching its writer schema from the registry when needed.
    pub async fn decode(&mut self, bytes: &[u8]) -> Result<R, KafkaClientError> {
        match self.decoder.decode(bytes) {
            Err(CodecError::UnknownSchemaId(id)) => {
                let Some(registry) = &self.registry else {
                    return Err(CodecError::UnknownSchemaId(id).into());
                };
                let schema = registry.schema_by_id(id).await?;
                self.decoder.add_schema_id(id, schema);
                Ok(self.decoder.decode(bytes)?)
            }
            other => Ok(other?),
        }
    }
}

impl KafkaClientError {
    /// A stable, low-cardinality name for metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            KafkaClientError::Kafka { .. } => "kafka",
            KafkaClientError::Codec(c) => c.kind(),
            KafkaClientError::Registry(_) => "schema_registry",
            KafkaClientError::Unreachable { .. } => "unreachable",
            KafkaClientError::ReadTimeout { .. } => "read_timeout",
            KafkaClientError::Task(_) => "task",
        }
    }

    /// Whether the input itself is bad (dead-letter it) rather than the system failing (retry).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            KafkaClientError::Codec(
                CodecError::Decode { .. }
                    | CodecError::Truncated { .. }
                    | CodecError::UnknownFraming(_)
                    | CodecError::UnknownFingerprint { .. }
                    | CodecError::Incompatible { .. }
            )
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(toml_text: &str) -> Result<KafkaSecurity, String> {
        let s: KafkaSecurity = config::Config::builder()
            .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| e.to_string())?;
        s.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }

    #[test]
    fn sasl_scram_over_tls_becomes_librdkafka_properties() {
        let dir = tempfile::tempdir().expect("tmp");
        let pw = dir.path().join("password");
        std::fs::write(&pw, "s3cr3t-pw\n").expect("write");
        let s = security(&format!(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"korvid\"\npassword_file = \"{}\"\n",
            pw.display()
        ))
        .expect("valid");
        let props: BTreeMap<_, _> = s.properties().expect("props").into_iter().collect();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.username"], "korvid");
        assert_eq!(
            props["sasl.password"], "s3cr3t-pw",
            "the file's newline is not part of it"
        );
        assert_eq!(props["ssl.endpoint.identification.algorithm"], "https");
        assert!(
            !format!("{s:?}").contains("s3cr3t"),
            "Debug never shows a password"
        );
        let inline = security(
            "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"hunter2-pw\"\n",
        )
        .expect("valid");
        assert!(!format!("{inline:?}").contains("hunter2"));

        // The librdkafka korvid is built with takes every mode (TLS and SCRAM need OpenSSL).
        for props in [
            s.properties().expect("props"),
            inline.properties().expect("props"),
        ] {
            let mut cfg = ClientConfig::new();
            cfg.set("bootstrap.servers", "127.0.0.1:1");
            for (k, v) in props {
                cfg.set(k, v);
            }
            let made: Result<rdkafka::producer::BaseProducer, _> = cfg.create();
            assert!(made.is_ok(), "{:?}", made.err());
        }
    }

    /// The `[kafka]` table of a whole settings file, as the services load it.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct WithKafka {
        kafka: KafkaSettings,
    }

    impl Validate for WithKafka {
        fn validate(&self) -> Result<(), SettingsError> {
            self.kafka.validate()
        }
    }

    #[test]
    fn static_membership_comes_from_the_environment_for_group_consumers_only() {
        let env = |id: &str| {
            vec![(
                "KORVID__KAFKA__GROUP_INSTANCE_ID".to_string(),
                id.to_string(),
            )]
        };
        let settings = crate::settings::load::<WithKafka>(None, env("korvid-detect-7c9f8-x2v4q"))
            .expect("valid")
            .kafka;
        assert_eq!(
            settings.group_instance_id.as_deref(),
            Some("korvid-detect-7c9f8-x2v4q")
        );
        let ctx = KafkaContext::new(settings, "127.0.0.1:1".into(), &Telemetry::new());
        let consumer = ctx.consumer_config("korvid-detect");
        assert_eq!(
            consumer.get("group.instance.id"),
            Some("korvid-detect-7c9f8-x2v4q")
        );
        assert_eq!(consumer.get("group.id"), Some("korvid-detect"));
        assert_eq!(
            ctx.client_config().get("group.instance.id"),
            None,
            "producers and followers are no group members"
        );
        let made: Result<rdkafka::consumer::BaseConsumer, _> = consumer.create();
        assert!(made.is_ok(), "librdkafka takes it: {:?}", made.err());

        let unset = KafkaContext::new(
            KafkaSettings::default(),
            "127.0.0.1:1".into(),
            &Telemetry::new(),
        );
        assert_eq!(
            unset
                .consumer_config("korvid-detect")
                .get("group.instance.id"),
            None,
            "dynamic membership by default"
        );

        // `$(POD_NAME)` that Kubernetes did not expand, and other ids Kafka refuses.
        for id in ["", "$(POD_NAME)", "pod name", "..", &"x".repeat(250)] {
            let e = crate::settings::load::<WithKafka>(None, env(id))
                .expect_err(id)
                .to_string();
            assert!(e.contains("kafka.group_instance_id"), "{id}: {e}");
        }
        let mut both = KafkaSettings {
            group_instance_id: Some("pod-a".into()),
            ..Default::default()
        };
        both.client
            .insert("group.instance.id".into(), "pod-b".into());
        let e = both.validate().expect_err("two places").to_string();
        assert!(e.contains("kafka.group_instance_id"), "{e}");
    }

    #[test]
    fn consumer_lag_sums_the_assigned_partitions_known_lag() {
        use rdkafka::statistics::{Partition, Topic};
        let part = |partition: i32, fetch_state: &str, consumer_lag: i64| Partition {
            partition,
            fetch_state: fetch_state.into(),
            consumer_lag,
            ..Default::default()
        };
        let topic = |parts: Vec<Partition>| Topic {
            partitions: parts.into_iter().map(|p| (p.partition, p)).collect(),
            ..Default::default()
        };
        let stats = Statistics {
            topics: [
                (
                    "korvid.k8s.audit.v1".to_string(),
                    topic(vec![
                        part(0, "active", 7),
                        part(1, "active", -1),
                        part(2, "offset-query", 3),
                        part(3, "stopped", 100),
                        part(4, "none", 100),
                        part(-1, "none", 50),
                    ]),
                ),
                ("korvid.k8s.events.v1".to_string(), topic(vec![])),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let lag: BTreeMap<String, i64> = consumer_lag(&stats).into_iter().collect();
        assert_eq!(lag["korvid.k8s.audit.v1"], 10, "assigned and known only");
        assert_eq!(
            lag["korvid.k8s.events.v1"], 0,
            "a topic with nothing assigned"
        );
    }

    #[test]
    fn client_properties_override_defaults_but_not_managed_keys() {
        let mut settings = KafkaSettings::default();
        for (k, v) in [("linger.ms", "25"), ("session.timeout.ms", "6000")] {
            settings.client.insert(k.into(), v.into());
        }
        settings.validate().expect("tuning is allowed");
        let ctx = KafkaContext::new(settings, "127.0.0.1:1".into(), &Telemetry::new());
        let producer = ctx.producer_config();
        assert_eq!(producer.get("linger.ms"), Some("25"));
        assert_eq!(producer.get("compression.type"), Some("lz4"));
        assert_eq!(producer.get("acks"), Some("all"));
        let consumer = ctx.consumer_config("korvid-detect");
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));

        for (key, _) in MANAGED_CLIENT_KEYS {
            let mut settings = KafkaSettings::default();
            settings.client.insert(key.to_string(), "1".into());
            let e = settings.validate().expect_err(key).to_string();
            assert!(e.contains(&format!("kafka.client.{key}")), "{e}");
        }
    }

    #[test]
    fn inconsistent_security_is_refused_with_the_key() {
        for (text, key) in [
            (
                "protocol = \"sasl_ssl\"\nusername = \"u\"\npassword = \"p\"\n",
                "sasl_mechanism",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\n",
                "password",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\npassword = \"p\"\n",
                "username",
            ),
            ("protocol = \"ssl\"\nusername = \"u\"\n", "protocol"),
            (
                "protocol = \"plaintext\"\nca_file = \"/etc/hosts\"\n",
                "protocol",
            ),
            (
                "protocol = \"ssl\"\ncert_file = \"/etc/hosts\"\n",
                "key_file",
            ),
            (
                "protocol = \"ssl\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "ca_file",
            ),
        ] {
            let e = security(text).expect_err(text);
            assert!(e.contains(&format!("kafka.security.{key}")), "{text}: {e}");
        }
        let e = security("protocol = \"tls\"\n").expect_err("unknown protocol");
        assert!(e.contains("tls") && e.contains("protocol"), "{e}");

        let mut settings = KafkaSettings::default();
        settings.security.protocol = SecurityProtocol::Ssl;
        settings
            .client
            .insert("security.protocol".into(), "plaintext".into());
        let e = settings.validate().expect_err("two places").to_string();
        assert!(e.contains("kafka.client.security.protocol"), "{e}");
    }
}
