//! Helpers for end-to-end tests: a real `korvid up` process with its embedded broker (tansu),
//! a real HTTP webhook receiver, audit batches, and reads of Kafka topics.
//!
//! Tests fail (never skip) when the broker is not installed: `make setup` installs it.

#![allow(dead_code)]

pub mod kube_api;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shared secret webhook deliveries are signed with in tests.
pub const HMAC_SECRET: &str = "test-webhook-secret";

/// A free loopback port.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Ports and paths of one korvid under test.
pub struct KorvidConfig {
    pub dir: PathBuf,
    /// An external Kafka to use instead of the embedded broker.
    pub external_kafka: Option<String>,
    /// Extra lines for `[kafka]`.
    pub kafka_extra: String,
    /// Extra lines for `[ingest.audit_webhook]`, and whether it serves HTTPS.
    pub webhook_extra: String,
    pub https: bool,
    /// TOML appended at the end (array tables such as `[[ingest.audit_logs]]`).
    pub extra: String,
    pub broker_port: u16,
    pub webhook_port: u16,
    pub telemetry_port: u16,
    pub receiver_url: String,
}

impl KorvidConfig {
    /// Fresh ports and a config file in `dir` that sends alerts to `receiver_url`.
    pub fn new(dir: &Path, receiver_url: &str) -> Self {
        Self::build(dir, receiver_url, None)
    }

    /// Like [`KorvidConfig::new`], but on an external Kafka at `bootstrap`.
    pub fn with_kafka(dir: &Path, receiver_url: &str, bootstrap: &str) -> Self {
        Self::build(dir, receiver_url, Some(bootstrap.to_string()))
    }

    fn build(dir: &Path, receiver_url: &str, external_kafka: Option<String>) -> Self {
        let cfg = KorvidConfig {
            dir: dir.to_path_buf(),
            external_kafka,
            kafka_extra: String::new(),
            webhook_extra: String::new(),
            https: false,
            extra: String::new(),
            broker_port: free_port(),
            webhook_port: free_port(),
            telemetry_port: free_port(),
            receiver_url: receiver_url.to_string(),
        };
        cfg.write();
        cfg
    }

    /// Appends TOML at the end of the config file and rewrites it.
    pub fn with_extra(mut self, toml: &str) -> Self {
        self.extra = toml.to_string();
        self.write();
        self
    }

    /// Adds `[kafka]` lines and rewrites the config file.
    pub fn with_kafka_extra(mut self, toml: &str) -> Self {
        self.kafka_extra = toml.to_string();
        self.write();
        self
    }

    /// Adds `[ingest.audit_webhook]` lines (TLS, token) and rewrites the config file.
    pub fn with_webhook(mut self, extra: &str, https: bool) -> Self {
        self.webhook_extra = extra.to_string();
        self.https = https;
        self.write();
        self
    }

    fn write(&self) {
        let toml = format!(
            r#"data_dir = "{dir}/data"

[broker]
listen = "127.0.0.1:{broker}"

[kafka]
partitions = 2
{bootstrap}{kafka_extra}
[telemetry]
listen = "127.0.0.1:{telemetry}"
otlp_endpoint = "{traces}"

[ingest]
cluster = "e2e"
redaction_key = "e2e-redaction-key-0123456789"

[ingest.audit_webhook]
listen = "127.0.0.1:{webhook}"
{webhook_extra}

[enrich]
window_ms = 2000
idle_flush_ms = 500

[[notify.webhooks]]
name = "receiver"
url = "{url}"
hmac_secret = "{secret}"
max_attempts = 3

# A receiver that is down: its deliveries must be dead-lettered without delaying the others.
[[notify.webhooks]]
name = "down"
url = "http://127.0.0.1:{down}/alerts"
max_attempts = 2
timeout_ms = 500

{extra}
"#,
            extra = self.extra,
            kafka_extra = self.kafka_extra,
            down = free_port(),
            dir = self.dir.display(),
            bootstrap = self
                .external_kafka
                .as_ref()
                .map(|b| format!("bootstrap_servers = \"{b}\"\n"))
                .unwrap_or_default(),
            broker = self.broker_port,
            telemetry = self.telemetry_port,
            webhook = self.webhook_port,
            webhook_extra = self.webhook_extra,
            url = self.receiver_url,
            traces = self.receiver_url.replace("/alerts", "/v1/traces"),
            secret = HMAC_SECRET,
        );
        std::fs::write(self.config_path(), toml).expect("write korvid.toml");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("korvid.toml")
    }

    pub fn webhook_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/audit/webhook", self.webhook_port)
    }

    pub fn telemetry_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.telemetry_port)
    }

    pub fn bootstrap(&self) -> String {
        self.external_kafka
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.broker_port))
    }
}

/// A running `korvid up`.
pub struct Korvid {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Korvid {
    /// Starts `korvid up` and waits until `/readyz` says every service is ready.
    pub async fn start(cfg: &KorvidConfig) -> Korvid {
        let log = cfg.dir.join(format!("korvid-{}.log", now_ms()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_korvid"))
            .arg("--config")
            .arg(cfg.config_path())
            .arg("up")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("dup")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn korvid");
        let mut k = Korvid {
            child: Some(child),
            log,
        };
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = k.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "korvid exited during start-up ({status}):\n{}",
                    k.log_text()
                );
            }
            if let Ok(r) = client.get(cfg.telemetry_url("/readyz")).send().await
                && r.status().is_success()
            {
                return k;
            }
            assert!(
                Instant::now() < deadline,
                "korvid not ready within 60 s:\n{}",
                k.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub async fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("korvid ignored SIGTERM for 30 s:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Korvid {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }
}

/// A child process stopped (see [`stop`]) when this goes out of scope, a failed test included.
pub struct StopOnDrop(pub Option<Child>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }
}

/// One korvid service process with its own telemetry port.
pub struct Service {
    pub name: &'static str,
    child: Option<Child>,
    pub log: PathBuf,
    pub port: u16,
}

impl Service {
    pub fn start(cfg: &KorvidConfig, command: &str, name: &'static str) -> Service {
        let port = free_port();
        let log = cfg.dir.join(format!("{name}.log"));
        // Appended to, so a restarted service's log follows its predecessor's.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_korvid"))
            .arg("--config")
            .arg(cfg.config_path())
            .arg(command)
            .env("KORVID__KAFKA__BOOTSTRAP_SERVERS", cfg.bootstrap())
            .env("KORVID__KAFKA__PARTITIONS", "4")
            .env("KORVID__TELEMETRY__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("dup")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn korvid");
        Service {
            name,
            child: Some(child),
            log,
            port,
        }
    }

    pub fn log_text(&self) -> String {
        format!(
            "--- {} ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    pub async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited during start-up ({status}):\n{}",
                    self.name,
                    self.log_text()
                );
            }
            let url = format!("http://127.0.0.1:{}/readyz", self.port);
            if let Ok(r) = http().get(url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let Ok(r) = http().get(url).send().await else {
            return 0.0;
        };
        r.text()
            .await
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no goodbye, no drain, nothing flushed.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL.
pub fn stop(mut c: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// A running korvid with a webhook receiver, in its own directory.
/// Field order is drop order: korvid stops before its directory goes.
pub struct Stack {
    pub korvid: Korvid,
    pub cfg: KorvidConfig,
    pub receiver: Receiver,
    pub dir: tempfile::TempDir,
}

/// Starts a receiver and `korvid up` with the default test configuration.
pub async fn stack() -> Stack {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::new(dir.path(), &receiver.url);
    let korvid = Korvid::start(&cfg).await;
    Stack {
        korvid,
        cfg,
        receiver,
        dir,
    }
}

/// Runs `korvid import PATH` against this korvid's Kafka, with its config (cluster, key).
pub fn korvid_import(cfg: &KorvidConfig, path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(cfg.config_path())
        .arg("import")
        .arg(path)
        .env("KORVID__KAFKA__BOOTSTRAP_SERVERS", cfg.bootstrap())
        .env("KORVID__TELEMETRY__LISTEN", "")
        .output()
        .expect("run korvid import")
}

/// POSTs `body` to `url` and expects 200.
pub async fn post_ok(url: &str, body: String) {
    let resp = http().post(url).body(body).send().await.expect("post");
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
}

/// An HTTP client (plain HTTP; the TLS provider is installed for reqwest's sake).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// One webhook delivery as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub at: Instant,
    pub body: serde_json::Value,
    pub signature_ok: bool,
    /// The W3C `traceparent` header the sink sent, if any.
    pub traceparent: Option<String>,
    /// `x-korvid-notification-id`: the same for a notification sent again after a crash.
    pub notification_id: Option<String>,
}

/// A real HTTP server that records alert deliveries and checks their signatures.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    /// Where OTLP/HTTP trace exports go (counted, not decoded).
    pub traces_url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    traces: Arc<Mutex<usize>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on(0).await
    }

    /// A receiver on a chosen port (to bring a sink's receiver back where it was).
    pub async fn start_on(port: u16) -> Receiver {
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let traces: Arc<Mutex<usize>> = Arc::default();
        let counter = traces.clone();
        let app = Router::new()
            .route("/alerts", post(receive))
            .with_state(deliveries.clone())
            .route(
                "/v1/traces",
                post(move |body: Bytes| async move {
                    if !body.is_empty() {
                        *counter.lock().expect("lock") += 1;
                    }
                    ""
                }),
            );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/alerts"),
            traces_url: format!("http://{addr}/v1/traces"),
            deliveries,
            traces,
        }
    }

    /// OTLP trace exports received so far.
    pub fn trace_exports(&self) -> usize {
        *self.traces.lock().expect("lock")
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("lock").clone()
    }

    /// Waits until at least `n` deliveries arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let d = self.deliveries();
            if d.len() >= n || Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn receive(
    State(store): State<Arc<Mutex<Vec<Delivery>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let ts = headers
        .get("x-korvid-timestamp")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let sig = headers
        .get("x-korvid-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(HMAC_SECRET.as_bytes()).expect("key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let parsed = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    store.lock().expect("lock").push(Delivery {
        at: Instant::now(),
        body: parsed,
        signature_ok: sig == expected,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        notification_id: headers
            .get("x-korvid-notification-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    "ok"
}

/// An RFC 3339 timestamp with microseconds for `ms` since the epoch.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let micros = ms.rem_euclid(1000) * 1000;
    // Civil-from-days (Howard Hinnant's algorithm) to avoid a date dependency in tests.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// An audit EventList with one `kubectl exec` into `namespace/pod` at `ms`.
pub fn exec_batch(audit_id: &str, namespace: &str, pod: &str, user: &str, ms: i64) -> String {
    serde_json::json!({
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": [{
            "level": "Metadata",
            "auditID": audit_id,
            "stage": "ResponseStarted",
            "requestURI": format!("/api/v1/namespaces/{namespace}/pods/{pod}/exec?command=sh&container=app&stdin=true&tty=true"),
            "verb": "create",
            "user": {"username": user, "groups": ["system:authenticated"]},
            "sourceIPs": ["198.51.100.7"],
            "userAgent": "kubectl/v1.31.0",
            "objectRef": {"resource": "pods", "namespace": namespace, "name": pod, "apiVersion": "v1", "subresource": "exec"},
            "responseStatus": {"metadata": {}, "code": 101},
            "requestReceivedTimestamp": rfc3339(ms - 20),
            "stageTimestamp": rfc3339(ms),
            "annotations": {"authorization.k8s.io/decision": "allow"}
        }]
    })
    .to_string()
}

/// One audit Event as kube-apiserver's log backend writes it: a single JSON line.
pub fn exec_log_line(audit_id: &str, namespace: &str, pod: &str, user: &str, ms: i64) -> String {
    let list: serde_json::Value =
        serde_json::from_str(&exec_batch(audit_id, namespace, pod, user, ms)).expect("json");
    let mut event = list["items"][0].clone();
    event["kind"] = "Event".into();
    event["apiVersion"] = "audit.k8s.io/v1".into();
    format!("{event}\n")
}

/// Reads a Prometheus counter (summing every label set whose text contains `labels`).
pub async fn metric(cfg: &KorvidConfig, name: &str, labels: &str) -> f64 {
    let text = match http().get(cfg.telemetry_url("/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `metric` reaches `at_least`; returns the last value.
pub async fn wait_metric(
    cfg: &KorvidConfig,
    name: &str,
    labels: &str,
    at_least: f64,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(cfg, name, labels).await;
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces raw bytes to `topic` and waits for the acknowledgement.
pub async fn produce_raw(bootstrap: &str, topic: &str, key: &str, value: &[u8]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
}

/// Every value currently in `topic`, read from the beginning (tombstones left out).
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Vec<u8>> {
    read_records(bootstrap, topic)
        .into_iter()
        .filter_map(|(_, v)| v)
        .collect()
}

/// Every (key, value) currently in `topic`, read from the beginning; `None` values are
/// tombstones. Order is per partition.
pub fn read_records(bootstrap: &str, topic: &str) -> Vec<(String, Option<Vec<u8>>)> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("e2e-reader-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut highs = Vec::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            if high > 0 {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("assign");
                highs.push((p.id(), high));
            }
        }
    }
    let mut out = Vec::new();
    if highs.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    // tansu's memory storage reports a partition's high watermark as its last batch's base
    // offset + 1, short of the records that batch holds; so read on past the watermarks until
    // a second passes without a record.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_record = Instant::now();
    while (!highs.is_empty() || last_record.elapsed() < Duration::from_secs(1))
        && Instant::now() < deadline
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last_record = Instant::now();
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            out.push((key, m.payload().map(<[u8]>::to_vec)));
            highs.retain(|(part, high)| !(*part == m.partition() && m.offset() + 1 >= *high));
        }
    }
    out
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`
/// (`ca.pem`, `server.pem`, `server-key.pem`, `client.pem`, `client-key.pem`, and a bearer
/// `token`); returns the CA and the client identity (certificate and key) as PEM.
pub fn pki(dir: &std::path::Path) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(dir).expect("pki dir");
    // Distinct names: OpenSSL (librdkafka) takes a certificate whose issuer equals its subject
    // for self-signed and never looks for the CA.
    let named = |sans: Vec<String>, cn: &str| {
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let mut ca_params = named(Vec::new(), "korvid test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server = named(
        vec!["127.0.0.1".to_string(), "localhost".to_string()],
        "korvid test server",
    )
    .signed_by(&server_key, &ca)
    .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let client = named(vec!["kube-apiserver".to_string()], "kube-apiserver")
        .signed_by(&client_key, &ca)
        .expect("client cert");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("write");
    std::fs::write(dir.join("server-key.pem"), server_key.serialize_pem()).expect("write");
    std::fs::write(dir.join("client.pem"), client.pem()).expect("write");
    std::fs::write(dir.join("client-key.pem"), client_key.serialize_pem()).expect("write");
    std::fs::write(dir.join("token"), "e2e-token-0123456789abcdef\n").expect("write");
    (
        ca.pem(),
        format!("{}{}", client.pem(), client_key.serialize_pem()),
    )
}

/// A TLS terminator in front of a plain TCP service (a Kafka broker): real TLS with a client
/// certificate required, forwarding bytes both ways. Counts the handshakes that completed.
pub struct TlsProxy {
    pub addr: String,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsProxy {
    /// Listens on `listen` with `dir`'s `server.pem`/`server-key.pem` (see [`pki`]), trusting
    /// client certificates signed by `ca.pem`, and forwards to `upstream`.
    pub async fn start(dir: &Path, listen: &str, upstream: &str) -> TlsProxy {
        let tls = korvid_common::tls::ServerTlsSettings {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server-key.pem"),
            client_ca_file: Some(dir.join("ca.pem")),
        };
        let config = Arc::new(tls.server_config().expect("TLS server config"));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("bind the TLS proxy");
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = handshakes.clone();
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, upstream, counted) =
                    (acceptor.clone(), upstream.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsProxy {
            addr: listen.to_string(),
            handshakes,
        }
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Every file under `dir`, recursively, sorted (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Debian's psql against `korvid sql --serve` on `port`: one command, unaligned tuples only,
/// with `env` on top (PGSSLMODE and friends).
pub fn psql(
    port: u16,
    password: &str,
    env: &[(&str, &str)],
    command: &str,
) -> std::process::Output {
    Command::new("/usr/bin/psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-U", "korvid", "-d", "korvid", "-A", "-t", "-X", "-c", command,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/psql must be installed (Debian package postgresql-client)")
}
