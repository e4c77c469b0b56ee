//! Load test of the whole pipeline on this machine: `korvid up` (release build, embedded broker
//! on disk, every service in one process) takes a sustained stream of realistic audit events
//! through its webhook while attacks are injected, five a second, each its own request; alerts
//! go to a real HTTP receiver in this process.
//!
//! Events are the benign traffic of `../shared/corpora/perfspec-benign-audit` (read in place,
//! its users, verbs, resources and URIs replayed with fresh ids and times), falling back to a
//! synthetic mix when the corpus is absent; the attacks are `kubectl exec` into a new pod each.
//! Each step offers one rate for `KORVID_LOAD_STEP_S` seconds (default 20) and reports what
//! ingest accepted, whether enrich kept up (its backlog once the step ends, and how long it took
//! to drain), the event-to-alert latency of the attacks (post to delivery, windows included)
//! in quiet namespaces and in a busy one, where the quiet attacks' time goes (webhook answer,
//! finding, alert), and the peak memory of korvid and its broker together.
//!
//! Baseline, same run: the same load generator against an HTTP server that reads each batch and
//! answers 200 (what this machine can post at all, with the generator on the same cores).
//!
//!     make loadtest                       # KORVID_LOAD_RATES=10000,15000,20000 by default
//!     KORVID_LOAD_CONFIG='[notify]\ngroup_wait_ms = 50' make loadtest   # a setting's effect
//!     KORVID_BENCH_OUT=BENCHMARKS.md ...  # appends its table (make bench does)
//!     KORVID_LOAD_ATTACKS_DIR=/tmp/load ...  # each attack's timings, one CSV per step

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use serde_json::{Value, json};

/// Events per webhook batch (kube-apiserver's batch backend sends up to 400 by default).
const BATCH: usize = 400;
/// Concurrent posters by default (`KORVID_LOAD_POSTERS`): kube-apiserver's buffered webhook
/// backend sends each batch in its own goroutine, so at 20,000 events/s (50 batches of 400 a
/// second, above its default throttle of 10/s, which such a cluster raises) several are in
/// flight at once.
const POSTERS: usize = 8;

fn posters() -> usize {
    std::env::var("KORVID_LOAD_POSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(POSTERS)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let dt = chrono::DateTime::from_timestamp(secs, (ms.rem_euclid(1000) * 1_000_000) as u32)
        .unwrap_or_default();
    dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The shape of one benign request: who did what to which resource.
#[derive(Clone)]
struct Template {
    user: String,
    verb: String,
    resource: String,
    subresource: String,
    name: String,
    namespace: String,
    uri: String,
    code: i64,
}

/// The corpus's requests, or a synthetic mix when it is not there.
fn templates() -> (Vec<Template>, &'static str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpora/perfspec-benign-audit/audit-logs.csv");
    let mut out = Vec::new();
    if let Ok(mut reader) = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(&path)
    {
        for row in reader.records().flatten() {
            if row.len() < 12 {
                continue;
            }
            let uri = row[8].to_string();
            let namespace = uri
                .split_once("/namespaces/")
                .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or("").to_string())
                .unwrap_or_default();
            out.push(Template {
                user: row[2].to_string(),
                verb: row[3].to_string(),
                resource: row[4].to_string(),
                subresource: row[5].to_string(),
                name: row[6].to_string(),
                namespace,
                uri,
                code: row[11].parse().unwrap_or(200),
            });
        }
    }
    if !out.is_empty() {
        return (out, "perfspec-benign-audit");
    }
    let mut synthetic = Vec::new();
    for i in 0..500 {
        let ns = format!("team-{}", i % 25);
        synthetic.push(Template {
            user: format!("system:serviceaccount:{ns}:app-{}", i % 7),
            verb: ["get", "list", "watch", "update", "create"][i % 5].into(),
            resource: ["pods", "configmaps", "services", "leases", "events"][i % 5].into(),
            subresource: String::new(),
            name: format!("obj-{i}"),
            uri: format!("/api/v1/namespaces/{ns}/pods/obj-{i}"),
            namespace: ns,
            code: 200,
        });
    }
    (synthetic, "synthetic (corpus not found)")
}

fn event(t: &Template, id: u64, ms: i64) -> Value {
    let mut object_ref = json!({"resource": t.resource, "apiVersion": "v1"});
    for (key, v) in [
        ("namespace", &t.namespace),
        ("name", &t.name),
        ("subresource", &t.subresource),
    ] {
        if !v.is_empty() {
            object_ref[key] = json!(v);
        }
    }
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": format!("load-{id}"), "stage": "ResponseComplete", "requestURI": t.uri,
        "verb": t.verb, "user": {"username": t.user, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.12"], "userAgent": "kubelet/v1.31.0", "objectRef": object_ref,
        "responseStatus": {"metadata": {}, "code": t.code},
        "requestReceivedTimestamp": rfc3339(ms - 2), "stageTimestamp": rfc3339(ms),
    })
}

fn attack(namespace: &str, pod: &str, id: u64, ms: i64) -> Value {
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": format!("load-attack-{id}"), "stage": "ResponseStarted",
        "requestURI": format!("/api/v1/namespaces/{namespace}/pods/{pod}/exec?command=sh&stdin=true&tty=true"),
        "verb": "create", "user": {"username": "mallory", "groups": ["system:authenticated"]},
        "sourceIPs": ["198.51.100.7"], "userAgent": "kubectl/v1.31.0",
        "objectRef": {"resource": "pods", "namespace": namespace, "name": pod, "apiVersion": "v1", "subresource": "exec"},
        "responseStatus": {"metadata": {}, "code": 101},
        "requestReceivedTimestamp": rfc3339(ms - 20), "stageTimestamp": rfc3339(ms),
    })
}

/// Wall-clock milliseconds by the exec'd pod's name: when its alert arrived, or when detect
/// raised its finding.
type Seen = Arc<Mutex<HashMap<String, i64>>>;

/// Namespaces the quiet attacks rotate over: each gets one attack a second and nothing else,
/// so its window closes on the idle flush.
const QUIET_NAMESPACES: u64 = 4;
/// The namespace of the busy attacks: one of the corpus's busiest, never idle, so the attack's
/// window goes out in early panes (`enrich.early_fire_ms`) and whole once the watermark passes it.
const BUSY_NAMESPACE: &str = "kube-system";

/// One injected attack.
#[derive(Clone)]
struct Attack {
    /// In the busy namespace (else a quiet one).
    busy: bool,
    /// Posted, wall-clock ms.
    posted: i64,
    /// The webhook answered 200 (ingest has it on Kafka), wall-clock ms.
    acked: i64,
}

type Attacks = Mutex<HashMap<String, Attack>>;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// What one step measured.
struct Step {
    offered: u64,
    accepted_per_s: f64,
    backlog_at_end: f64,
    drain_s: f64,
    /// Post to alert, quiet and busy namespace, sorted.
    quiet_ms: Vec<u64>,
    busy_ms: Vec<u64>,
    quiet_attacks: usize,
    busy_attacks: usize,
    /// Quiet attacks, sorted: post to webhook answer, post to finding, finding to alert.
    ingest_ms: Vec<u64>,
    to_finding_ms: Vec<u64>,
    finding_to_alert_ms: Vec<u64>,
    peak_rss_mb: f64,
    /// Cores busy on average while events were offered: korvid, its broker, the generator.
    cores: (f64, f64, f64),
}

/// p50 / p99 of sorted milliseconds.
fn p50_p99(sorted: &[u64]) -> String {
    format!("{} / {}", percentile(sorted, 0.5), percentile(sorted, 0.99))
}

impl Step {
    /// Its row of the main table.
    fn row(&self, baseline: f64) -> String {
        format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} | {}/{} | {} | {}/{} | {} | {:.0} | {:.2} / {:.2} / {:.2} |\n",
            self.offered,
            self.accepted_per_s,
            baseline,
            self.accepted_per_s / baseline,
            self.backlog_at_end,
            self.drain_s,
            self.quiet_ms.len(),
            self.quiet_attacks,
            p50_p99(&self.quiet_ms),
            self.busy_ms.len(),
            self.busy_attacks,
            p50_p99(&self.busy_ms),
            self.peak_rss_mb,
            self.cores.0,
            self.cores.1,
            self.cores.2
        )
    }

    /// Its row of the table of where the quiet attacks' time goes.
    fn breakdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {} |\n",
            self.offered,
            p50_p99(&self.ingest_ms),
            p50_p99(&self.to_finding_ms),
            p50_p99(&self.finding_to_alert_ms)
        )
    }
}

/// Posts `rate` events/s (0: as fast as possible) for `secs` to `url`, with attacks when
/// `attacks` is set: every 250 ms one in a quiet namespace (each of [`QUIET_NAMESPACES`] once a
/// second) and every second one in [`BUSY_NAMESPACE`]. Returns the events the receiver took.
async fn generate(
    url: &str,
    templates: &Arc<Vec<Template>>,
    rate: u64,
    secs: u64,
    attacks: Option<Arc<Attacks>>,
    next_id: &AtomicU64,
) -> u64 {
    let client = reqwest::Client::new();
    let accepted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let posters = posters();
    let per_poster = rate as f64 / posters as f64;
    let mut tasks = Vec::new();
    for p in 0..posters {
        let (client, url, templates, accepted) = (
            client.clone(),
            url.to_string(),
            templates.clone(),
            accepted.clone(),
        );
        let ids: Vec<u64> = (0..(secs + 5) * rate.max(200_000) / posters as u64 / BATCH as u64)
            .map(|_| next_id.fetch_add(BATCH as u64, Ordering::Relaxed))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            for first_id in ids {
                if Instant::now() >= end {
                    break;
                }
                if per_poster > 0.0 {
                    // Paced: a batch goes once the rate has earned its events.
                    let due =
                        start + Duration::from_secs_f64((sent + BATCH as u64) as f64 / per_poster);
                    tokio::time::sleep_until(due.into()).await;
                }
                let ms = now_ms();
                let items: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        let n = first_id + i as u64;
                        event(&templates[(n as usize + p * 7919) % templates.len()], n, ms)
                    })
                    .collect();
                let body =
                    json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
                        .to_string();
                sent += BATCH as u64;
                if let Ok(r) = client.post(&url).body(body).send().await
                    && r.status().is_success()
                {
                    accepted.fetch_add(BATCH as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    if let Some(book) = attacks {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.tick().await;
        let mut n = 0u64;
        while Instant::now() + Duration::from_secs(1) < end {
            tick.tick().await;
            n += 1;
            let mut targets = vec![(false, format!("shop-{}", n % QUIET_NAMESPACES))];
            if n.is_multiple_of(4) {
                targets.push((true, BUSY_NAMESPACE.to_string()));
            }
            for (busy, namespace) in targets {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let pod = format!("web-{id}");
                let posted = now_ms();
                let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                    "items": [attack(&namespace, &pod, id, posted)]})
                .to_string();
                let (client, url, book) = (client.clone(), url.to_string(), book.clone());
                // Each its own request, so a slow answer does not hold the next one back.
                tasks.push(tokio::spawn(async move {
                    if let Ok(r) = client.post(&url).body(body).send().await
                        && r.status().is_success()
                    {
                        let acked = now_ms();
                        book.lock().expect("lock").insert(
                            pod,
                            Attack {
                                busy,
                                posted,
                                acked,
                            },
                        );
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    accepted.load(Ordering::Relaxed)
}

/// Resident memory of `pid` and its descendants (korvid and the broker it started), in MB.
fn tree_rss_mb(pid: u32) -> f64 {
    let mut parents: HashMap<u32, u32> = HashMap::new();
    let mut rss: HashMap<u32, f64> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("PPid:") {
                parents.insert(p, v.trim().parse().unwrap_or(0));
            }
            if let Some(v) = line.strip_prefix("VmRSS:") {
                let kb: f64 = v
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse()
                    .unwrap_or(0.0);
                rss.insert(p, kb / 1024.0);
            }
        }
    }
    let in_tree = |mut p: u32| {
        for _ in 0..16 {
            if p == pid {
                return true;
            }
            match parents.get(&p) {
                Some(&pp) if pp != 0 => p = pp,
                _ => return false,
            }
        }
        false
    };
    rss.iter()
        .filter(|(p, _)| in_tree(**p))
        .map(|(_, mb)| mb)
        .sum()
}

/// CPU time (user + system, seconds) so far of `pid` itself, of its descendants (the broker it
/// started), and of this process (the load generator and its receiver).
fn cpu_seconds(pid: u32, ticks_per_s: f64) -> (f64, f64, f64) {
    // /proc/<pid>/stat after the command's closing parenthesis: state, ppid, ..., utime (12th),
    // stime (13th).
    let read = |path: std::path::PathBuf| -> Option<(u32, f64)> {
        let stat = std::fs::read_to_string(path).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((ppid, ticks / ticks_per_s))
    };
    let mut procs: HashMap<u32, (u32, f64)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>()
            && let Some(v) = read(entry.path().join("stat"))
        {
            procs.insert(p, v);
        }
    }
    let descends = |mut p: u32| {
        for _ in 0..16 {
            match procs.get(&p) {
                Some(&(pp, _)) if pp == pid => return true,
                Some(&(pp, _)) if pp != 0 => p = pp,
                _ => return false,
            }
        }
        false
    };
    let own = procs.get(&pid).map_or(0.0, |v| v.1);
    let children = procs
        .iter()
        .filter(|(p, _)| descends(**p))
        .map(|(_, v)| v.1)
        .sum();
    let me = procs.get(&std::process::id()).map_or(0.0, |v| v.1);
    (own, children, me)
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

async fn metric(url: &str, name: &str) -> f64 {
    match metrics_page(url).await {
        Some(page) => metric_in(&page, name),
        None => f64::NAN,
    }
}

/// The exposition text at `url`, if it answers.
async fn metrics_page(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

/// The sum of every sample of `name` (all label sets) in an exposition text.
fn metric_in(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes `attacks-<rate>.csv` under `dir`: per attack, when it was posted (Unix ms), whether
/// its namespace was busy, and the milliseconds from the post to the webhook's answer, to the
/// finding and to the alert (-1: none came), in posting order. A latency percentile hides *when*
/// the slow attacks happened (a warm-up, a stall); this shows it.
fn write_attacks(
    dir: &str,
    rate: u64,
    posted: &HashMap<String, Attack>,
    found: &HashMap<String, i64>,
    alerted: &HashMap<String, i64>,
) {
    let after = |from: i64, to: Option<&i64>| to.map_or(-1, |t| (t - from).max(0));
    let mut rows: Vec<(i64, String)> = posted
        .iter()
        .map(|(pod, a)| {
            let row = format!(
                "{},{},{},{},{},{pod}",
                a.posted,
                a.busy,
                (a.acked - a.posted).max(0),
                after(a.posted, found.get(pod)),
                after(a.posted, alerted.get(pod)),
            );
            (a.posted, row)
        })
        .collect();
    rows.sort();
    let mut csv = String::from("posted_ms,busy,answer_ms,finding_ms,alert_ms,pod\n");
    for (_, row) in rows {
        csv.push_str(&row);
        csv.push('\n');
    }
    let path = std::path::Path::new(dir).join(format!("attacks-{rate}.csv"));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, csv)) {
        eprintln!("load: cannot write {}: {e}", path.display());
    }
}

/// The embedded broker's storage (`KORVID_LOAD_BROKER_STORAGE`): `sqlite` (on disk, the default
/// of `korvid up`) or `memory` (what the pipeline does when the broker's disk is not in the way).
fn broker_storage() -> String {
    std::env::var("KORVID_LOAD_BROKER_STORAGE").unwrap_or_else(|_| "sqlite".into())
}

/// More korvid.toml for the run (`KORVID_LOAD_CONFIG`, TOML text appended to the test's file;
/// e.g. `[enrich]\nallowed_lateness_ms = 500`), to measure a setting's effect.
fn extra_config() -> String {
    std::env::var("KORVID_LOAD_CONFIG")
        .map(|c| c.replace("\\n", "\n"))
        .unwrap_or_default()
}

/// The stage histograms' (name, count, sum of seconds) as exposed now.
async fn stage_sums(url: &str) -> Vec<(&'static str, f64, f64)> {
    let page = metrics_page(url).await;
    let value = |name: String| page.as_deref().map_or(f64::NAN, |p| metric_in(p, &name));
    let mut out = Vec::new();
    for name in [
        "korvid_enrich_window_latency_seconds",
        "korvid_enrich_window_build_seconds",
        "korvid_detect_window_seconds",
        "korvid_detect_model_batch_seconds",
        "korvid_notify_event_to_alert_seconds",
    ] {
        let count = value(format!("{name}_count"));
        let sum = value(format!("{name}_sum"));
        out.push((name.trim_start_matches("korvid_"), count, sum));
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rates: Vec<u64> = std::env::var("KORVID_LOAD_RATES")
        .unwrap_or_else(|_| "10000,15000,20000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let step_s: u64 = std::env::var("KORVID_LOAD_STEP_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (templates, source) = templates();
    let templates = Arc::new(templates);
    let next_id = AtomicU64::new(1);
    println!("load: {} request templates from {source}", templates.len());

    // Baseline: the generator against a server that only reads the bodies.
    let sink = serve(Router::new().route("/", post(|_b: Bytes| async { "ok" }))).await;
    let baseline = generate(&sink, &templates, 0, 5, None, &next_id).await as f64 / 5.0;
    println!("load: baseline (post to a discarding HTTP server): {baseline:.0} events/s");

    // The pipeline.
    let alerts: Seen = Arc::default();
    let book = alerts.clone();
    let receiver = serve(Router::new().route(
        "/alerts",
        post(move |body: Bytes| {
            let book = book.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Some(pod) = v["alert"]["subject"]["name"].as_str() {
                    book.lock()
                        .expect("lock")
                        .entry(pod.to_string())
                        .or_insert_with(now_ms);
                }
                "ok"
            }
        }),
    ))
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port")
    };
    let (broker, webhook, telemetry) = (port(()), port(()), port(()));
    let config = dir.path().join("korvid.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{d}/data\"\n[broker]\nlisten = \"127.0.0.1:{broker}\"\nstorage = \"{storage}\"\n\
             [telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\nlog_level = \"warn\"\n\
             [ingest]\ncluster = \"load\"\nredaction_key = \"load-test-redaction-key-0123\"\n\
             [ingest.audit_webhook]\nlisten = \"127.0.0.1:{webhook}\"\n\
             [[notify.webhooks]]\nname = \"receiver\"\nurl = \"{receiver}/alerts\"\n{extra}",
            d = dir.path().display(),
            extra = extra_config(),
            storage = broker_storage(),
        ),
    )
    .expect("config");
    let mut korvid = std::process::Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(&config)
        .arg("up")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(dir.path().join("korvid.log")).expect("log"),
        ))
        .spawn()
        .expect("start korvid");
    let metrics = format!("http://127.0.0.1:{telemetry}/metrics");
    let ready = format!("http://127.0.0.1:{telemetry}/readyz");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "korvid did not become ready:\n{}",
            std::fs::read_to_string(dir.path().join("korvid.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = format!("http://127.0.0.1:{webhook}/audit/webhook");
    let pid = korvid.id();
    let findings = follow_exec_findings(&format!("127.0.0.1:{broker}"));
    let ticks = clock_ticks();

    let mut steps = Vec::new();
    for &rate in &rates {
        let posted: Arc<Attacks> = Arc::default();
        let peak = Arc::new(Mutex::new(0.0f64));
        let sampling = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    let now = tree_rss_mb(pid);
                    {
                        let mut p = peak.lock().expect("lock");
                        *p = p.max(now);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        let stages_before = stage_sums(&metrics).await;
        let consumed_before = metric(&metrics, "korvid_enrich_events_total").await;
        let started = Instant::now();
        let cpu_before = cpu_seconds(pid, ticks);
        let accepted = generate(
            &url,
            &templates,
            rate,
            step_s,
            Some(posted.clone()),
            &next_id,
        )
        .await;
        let took = started.elapsed().as_secs_f64();
        let cpu_after = cpu_seconds(pid, ticks);
        let cores = (
            (cpu_after.0 - cpu_before.0) / took,
            (cpu_after.1 - cpu_before.1) / took,
            (cpu_after.2 - cpu_before.2) / took,
        );
        let consumed = metric(&metrics, "korvid_enrich_events_total").await - consumed_before;
        let attacks = posted.lock().expect("lock").len() as u64;
        let backlog = (accepted + attacks) as f64 - consumed;
        // How long enrich needs to catch up with what was accepted.
        let drain_start = Instant::now();
        while metric(&metrics, "korvid_enrich_events_total").await - consumed_before
            < (accepted + attacks) as f64
            && drain_start.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drain_s = drain_start.elapsed().as_secs_f64();
        // The last attacks' windows close and their alerts go out (an attack without an alert
        // by then counts as missing in the table).
        tokio::time::sleep(Duration::from_secs(10)).await;
        sampling.abort();
        let stages: Vec<String> = stage_sums(&metrics)
            .await
            .iter()
            .zip(&stages_before)
            .map(|((name, count, sum), (_, c0, s0))| {
                let n = count - c0;
                format!(
                    "{name} {n:.0} x {:.1} ms",
                    if n > 0.0 {
                        (sum - s0) / n * 1000.0
                    } else {
                        0.0
                    }
                )
            })
            .collect();
        println!(
            "load: offered {rate}/s, stage timings (count x mean): {}",
            stages.join(", ")
        );
        let got = alerts.lock().expect("lock").clone();
        let found = findings.lock().expect("lock").clone();
        let posted = posted.lock().expect("lock").clone();
        let sorted = |mut v: Vec<u64>| {
            v.sort_unstable();
            v
        };
        let since = |from: i64, to: i64| to.saturating_sub(from).max(0) as u64;
        let latencies = |busy: bool| {
            sorted(
                posted
                    .iter()
                    .filter(|(_, a)| a.busy == busy)
                    .filter_map(|(pod, a)| got.get(pod).map(|t| since(a.posted, *t)))
                    .collect(),
            )
        };
        if let Ok(dir) = std::env::var("KORVID_LOAD_ATTACKS_DIR") {
            write_attacks(&dir, rate, &posted, &found, &got);
        }
        let quiet: Vec<(&String, &Attack)> = posted.iter().filter(|(_, a)| !a.busy).collect();
        let step = Step {
            offered: rate,
            accepted_per_s: accepted as f64 / took,
            backlog_at_end: backlog,
            drain_s,
            quiet_ms: latencies(false),
            busy_ms: latencies(true),
            quiet_attacks: quiet.len(),
            busy_attacks: posted.len() - quiet.len(),
            ingest_ms: sorted(
                quiet
                    .iter()
                    .map(|(_, a)| since(a.posted, a.acked))
                    .collect(),
            ),
            to_finding_ms: sorted(
                quiet
                    .iter()
                    .filter_map(|(pod, a)| found.get(*pod).map(|t| since(a.posted, *t)))
                    .collect(),
            ),
            finding_to_alert_ms: sorted(
                quiet
                    .iter()
                    .filter_map(|(pod, _)| Some(since(*found.get(*pod)?, *got.get(*pod)?)))
                    .collect(),
            ),
            peak_rss_mb: *peak.lock().expect("lock"),
            cores,
        };
        print!(
            "load: {}load: time of the quiet attacks: {}",
            step.row(baseline),
            step.breakdown_row()
        );
        steps.push(step);
    }
    // SIGTERM: korvid drains and stops the broker it started (SIGKILL would orphan it).
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = korvid.wait();

    let mut table = format!(
        "\n## Load test (whole pipeline, `korvid up`, embedded broker, {storage} storage)\n\n\
         Realistic audit events (perfspec-benign-audit replayed) posted in batches of 400 by {} concurrent posters on the same machine. \
         Attacks (`kubectl exec`, each its own request): every 250 ms one in a quiet namespace (four namespaces with one exec a second each and no \
         other traffic: the window closes on the idle flush, {idle} ms), and every second one in `{BUSY_NAMESPACE}` (busy, never idle: the window publishes an early pane \
         at most {early} ms after the event arrives, and closes once the watermark passes its end, up to the window, {window} ms, plus the \
         allowed lateness, {late} ms, after the event). \
         Latency = attack posted to alert received, windows included. \
         Baseline: the same generator posting to an HTTP server that discards the batches.\n\n\
         Cores busy: average CPU use while the step's events were offered, of korvid, of its broker (tansu) \
         and of the generator (this process), out of the machine's {}.\n\n",
        posters(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        storage = broker_storage(),
        idle = korvid_enrich::EnrichSettings::default().idle_flush_ms,
        early = korvid_enrich::EnrichSettings::default().early_fire_ms,
        window = korvid_enrich::EnrichSettings::default().window_ms,
        late = korvid_enrich::EnrichSettings::default().allowed_lateness_ms,
    );
    if !extra_config().is_empty() {
        table.push_str(&format!(
            "\nSettings changed from the defaults for this run (`KORVID_LOAD_CONFIG`):\n\n```toml\n{}\n```\n\n",
            extra_config().trim()
        ));
    }
    table.push_str(
        "| offered events/s | accepted events/s | baseline events/s | accepted / baseline | enrich backlog at end | drain s | alerts / attacks, quiet | p50 / p99 ms, quiet | alerts / attacks, busy | p50 / p99 ms, busy | peak MB (korvid + broker) | cores busy (korvid / broker / generator) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in &steps {
        table.push_str(&s.row(baseline));
    }
    table.push_str(
        "\nWhere the quiet attacks' time goes (p50 / p99 ms): the webhook's answer (ingest has the event on Kafka), \
         the finding (`detected_at`, read from the findings topic: ingest, enrich's window, detect), and the finding to the alert \
         (notify's group_wait and the webhook sink).\n\n\
         | offered events/s | post to webhook answer | post to finding | finding to alert |\n|---|---|---|---|\n",
    );
    for s in &steps {
        table.push_str(&s.breakdown_row());
    }
    print!("{table}");
    if let Ok(path) = std::env::var("KORVID_BENCH_OUT") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("bench output");
        f.write_all(table.as_bytes()).expect("write");
    }
}

/// Follows the findings topic from the start and notes when detect raised each exec finding
/// (`detected_at`), by the exec'd pod's name.
fn follow_exec_findings(bootstrap: &str) -> Seen {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let seen: Seen = Arc::default();
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "load-test-findings")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("findings consumer");
    consumer
        .subscribe(&["korvid.findings.v1"])
        .expect("subscribe");
    let book = seen.clone();
    tokio::spawn(async move {
        let decoder = korvid_schemas::codec::Decoder::<korvid_schemas::Finding>::new();
        loop {
            let Ok(m) = consumer.recv().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let Some(f) = m.payload().and_then(|p| decoder.decode(p).ok())
                && f.rule_id.as_deref() == Some("KOR-0001")
            {
                book.lock()
                    .expect("lock")
                    .entry(f.subject.name)
                    .or_insert(f.detected_at);
            }
        }
    });
    seen
}
