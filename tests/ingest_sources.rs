//! Every ingest source on the real broker: Kubernetes list/watch (against a server speaking the
//! protocol), snapshot import, watched scan directories, and the promise that planted secrets
//! never leave ingest: no topic, log, metric, delivered alert, trace or lake file holds them.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use korvid_schemas::{Decoder, ImageScan, KubeEvent, ObjectChange, ObjectOp};
use serde_json::{Value, json};
use support::kube_api::{FakeApiServer, Script, bookmark, event, gone};
use support::*;

const PODS: &str = "/api/v1/pods";
const SECRETS: &str = "/api/v1/secrets";
const EVENTS: &str = "/api/v1/events";
const BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/rolebindings";
const REPORTS: &str = "/apis/aquasecurity.github.io/v1alpha1/vulnerabilityreports";
const PLANT: &str = "PLANTED-s3cr3t-9d1e7c";

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A pod as a list item (no kind/apiVersion, as the API server sends them).
fn pod(name: &str, uid: &str, rv: &str, app: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": rv,
            "labels": {"app": app}, "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                format!("{{\"env\":[{{\"name\":\"DB\",\"value\":\"{PLANT}\"}}]}}")}},
           "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx:1.25",
             "env": [{"name": "DB_PASSWORD", "value": PLANT}]}]}})
}

fn typed(mut v: Value, api_version: &str, kind: &str) -> Value {
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    v
}

fn scripts() -> HashMap<String, Script> {
    let mut s = HashMap::new();
    s.insert(
        PODS.to_string(),
        Script {
            lists: vec![
                (
                    "100".into(),
                    vec![
                        pod("a", "uid-a", "90", "web"),
                        pod("b", "uid-b", "95", "web"),
                    ],
                ),
                // After 410 Gone: c was deleted while the watch was down, d appeared.
                (
                    "200".into(),
                    vec![
                        pod("a", "uid-a", "102", "web-v2"),
                        pod("d", "uid-d", "150", "web"),
                    ],
                ),
            ],
            watches: vec![
                vec![
                    event("ADDED", typed(pod("c", "uid-c", "101", "web"), "v1", "Pod")),
                    event(
                        "MODIFIED",
                        typed(pod("a", "uid-a", "102", "web-v2"), "v1", "Pod"),
                    ),
                    bookmark("v1", "Pod", "103"),
                    event(
                        "DELETED",
                        typed(pod("b", "uid-b", "104", "web"), "v1", "Pod"),
                    ),
                    gone(),
                ],
                vec![bookmark("v1", "Pod", "201")],
            ],
        },
    );
    s.insert(
        SECRETS.to_string(),
        Script {
            lists: vec![(
                "10".into(),
                vec![
                    json!({"metadata": {"name": "db", "namespace": "shop", "uid": "uid-s"},
                    "type": "Opaque", "data": {"password": b64(PLANT)}}),
                ],
            )],
            watches: vec![vec![]],
        },
    );
    s.insert(
        BINDINGS.to_string(),
        Script {
            lists: vec![(
                "10".into(),
                vec![json!({"metadata": {"name": "ops-admin", "namespace": "shop", "uid": "uid-rb"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                    "subjects": [{"kind": "User", "name": "ops"}]})],
            )],
            watches: vec![vec![event(
                "DELETED",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "ops-admin", "namespace": "shop", "uid": "uid-rb", "resourceVersion": "11"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"}}),
            )]],
        },
    );
    s.insert(
        EVENTS.to_string(),
        Script {
            lists: vec![(
                "10".into(),
                vec![json!({"metadata": {"name": "web.1", "namespace": "shop", "uid": "uid-ev"},
                    "involvedObject": {"kind": "Pod", "name": "a", "namespace": "shop", "uid": "uid-a"},
                    "reason": "BackOff", "message": "Back-off restarting failed container", "type": "Warning",
                    "count": 4, "lastTimestamp": "2026-11-27T01:00:00Z", "source": {"component": "kubelet"}})],
            )],
            watches: vec![vec![]],
        },
    );
    s.insert(
        REPORTS.to_string(),
        Script {
            lists: vec![(
                "10".into(),
                vec![json!({"metadata": {"name": "replicaset-web-web", "namespace": "shop", "uid": "uid-vr",
                        "labels": {"trivy-operator.resource.kind": "ReplicaSet"}},
                    "report": {"updateTimestamp": "2026-11-27T00:30:00Z",
                        "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "0.58.0"},
                        "registry": {"server": "index.docker.io"},
                        "artifact": {"repository": "library/nginx", "tag": "1.25",
                            "digest": "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac"},
                        "os": {"family": "debian"},
                        "summary": {"criticalCount": 1, "highCount": 2, "mediumCount": 0, "lowCount": 5, "unknownCount": 1},
                        "vulnerabilities": [{"vulnerabilityID": "CVE-2023-44487", "resource": "libnghttp2-14",
                            "installedVersion": "1.52.0-1", "fixedVersion": "1.52.0-1+deb12u1", "severity": "HIGH",
                            "score": 7.5, "title": "HTTP/2 Rapid Reset"}]}})],
            )],
            watches: vec![vec![]],
        },
    );
    s
}

/// Waits until a pod has been found gone during a list; returns how many were.
async fn vanished_pods(cfg: &KorvidConfig) -> f64 {
    wait_metric(
        cfg,
        "korvid_ingest_kube_watch_events",
        "kind=\"Pod\",op=\"vanished\"",
        1.0,
        Duration::from_secs(30),
    )
    .await
}

fn decode_changes(records: &[(String, Option<Vec<u8>>)]) -> Vec<(String, Option<ObjectChange>)> {
    records
        .iter()
        .map(|(k, v)| {
            let change = v.as_ref().map(|b| {
                Decoder::<ObjectChange>::new()
                    .decode(b)
                    .expect("an ObjectChange")
            });
            (k.clone(), change)
        })
        .collect()
}

/// (op, resourceVersion) per record for `key`, `None` for a tombstone.
fn history(
    changes: &[(String, Option<ObjectChange>)],
    key: &str,
) -> Vec<Option<(ObjectOp, Option<String>)>> {
    changes
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, c)| c.as_ref().map(|c| (c.op, c.resource_version.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watchers_keep_adds_updates_deletes_and_relists() {
    let api = FakeApiServer::start(scripts()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    api.write_kubeconfig(&dir.path().join("kubeconfig"));
    let cfg = KorvidConfig::new(dir.path(), &receiver.url).with_extra(&format!(
        r#"[ingest.kubernetes]
enabled = true
kubeconfig = "{dir}/kubeconfig"
kinds = ["v1/Pod", "v1/Secret", "v1/Event", "rbac.authorization.k8s.io/v1/RoleBinding",
         "aquasecurity.github.io/v1alpha1/VulnerabilityReport", "example.com/v1/Widget"]
"#,
        dir = dir.path().display()
    ));
    // Ready means every kind was listed once, the unserved Widget included.
    let korvid = Korvid::start(&cfg).await;
    let vanished = vanished_pods(&cfg).await;
    assert_eq!(
        vanished,
        1.0,
        "pod c vanished during the re-list:\n{}",
        korvid.log_text()
    );
    wait_metric(
        &cfg,
        "korvid_ingest_kube_watch_events",
        "kind=\"RoleBinding\",op=\"delete\"",
        1.0,
        Duration::from_secs(10),
    )
    .await;

    // The metrics count what the watchers queued; the records become readable once the broker
    // has acknowledged them, so read until every object's history is there (or time is up and
    // the assertions below say what is missing).
    let expected = [
        ("e2e/uid-a", 3),
        ("e2e/uid-b", 3),
        ("e2e/uid-c", 3),
        ("e2e/uid-d", 1),
        ("e2e/uid-rb", 3),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let changes = loop {
        let changes = decode_changes(&read_records(&cfg.bootstrap(), "korvid.k8s.objects.v1"));
        let complete = expected
            .iter()
            .all(|(key, n)| history(&changes, key).len() >= *n);
        if complete || std::time::Instant::now() > deadline {
            break changes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let snap = |rv: &str| Some((ObjectOp::Snapshot, Some(rv.to_string())));
    assert_eq!(
        history(&changes, "e2e/uid-a"),
        vec![
            snap("90"),
            Some((ObjectOp::Upsert, Some("102".into()))),
            snap("102")
        ]
    );
    assert_eq!(
        history(&changes, "e2e/uid-b"),
        vec![
            snap("95"),
            Some((ObjectOp::Delete, Some("104".into()))),
            None
        ],
        "a delete is followed by a tombstone"
    );
    assert_eq!(
        history(&changes, "e2e/uid-c"),
        vec![
            Some((ObjectOp::Upsert, Some("101".into()))),
            Some((ObjectOp::Delete, None)),
            None
        ],
        "an object gone during the re-list is deleted"
    );
    assert_eq!(history(&changes, "e2e/uid-d"), vec![snap("150")]);
    let rb_ops: Vec<Option<ObjectOp>> = history(&changes, "e2e/uid-rb")
        .into_iter()
        .map(|h| h.map(|(op, _)| op))
        .collect();
    assert_eq!(
        rb_ops,
        vec![Some(ObjectOp::Snapshot), Some(ObjectOp::Delete), None],
        "binding deletions are kept"
    );

    // The records themselves: typed, labelled, managedFields gone, secrets hashed.
    let a = changes
        .iter()
        .filter_map(|(k, c)| (k == "e2e/uid-a").then_some(c.as_ref()).flatten())
        .next_back()
        .expect("pod a");
    assert_eq!(
        (a.kind.as_str(), a.api_version.as_str(), a.cluster.as_str()),
        ("Pod", "v1", "e2e")
    );
    assert_eq!(a.labels.get("app").map(String::as_str), Some("web-v2"));
    let body = a.object_json.as_deref().expect("body");
    assert!(!body.contains("managedFields"), "{body}");
    let secret = changes
        .iter()
        .find_map(|(k, c)| (k == "e2e/uid-s").then_some(c.as_ref()).flatten())
        .expect("secret");
    let sbody = secret.object_json.as_deref().expect("body");
    assert!(
        sbody.contains("\"password\":\"hmac-sha256:") && sbody.contains("Opaque"),
        "{sbody}"
    );

    // The watch resumed from the list's resourceVersion, asked for bookmarks, and re-listed
    // after 410 Gone.
    let seen = api.seen(PODS);
    let watches: Vec<_> = seen
        .iter()
        .filter(|s| s.query.contains_key("watch"))
        .collect();
    let lists = seen.len() - watches.len();
    assert_eq!(lists, 2, "{seen:?}");
    assert_eq!(
        watches[0].query.get("resourceVersion").map(String::as_str),
        Some("100")
    );
    assert_eq!(
        watches[0]
            .query
            .get("allowWatchBookmarks")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        watches[1].query.get("resourceVersion").map(String::as_str),
        Some("200")
    );

    // Events become KubeEvents; VulnerabilityReports become ImageScans with counts.
    let events: Vec<KubeEvent> = read_topic(&cfg.bootstrap(), "korvid.k8s.events.v1")
        .iter()
        .map(|b| Decoder::<KubeEvent>::new().decode(b).expect("KubeEvent"))
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].reason.as_str(), events[0].count), ("BackOff", 4));
    assert_eq!(events[0].involved_uid.as_deref(), Some("uid-a"));
    // ...and enrich carries the Event into a window's kube_events table.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = read_topic(&cfg.bootstrap(), "korvid.graph.windows.v1")
            .iter()
            .filter_map(|b| Decoder::<korvid_schemas::GraphWindow>::new().decode(b).ok())
            .any(|w| {
                w.partition_key == "e2e/shop"
                    && !w.kube_events.is_empty()
                    && String::from_utf8_lossy(&w.kube_events).contains("BackOff")
            });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no window with the Event:\n{}",
            korvid.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scans: Vec<ImageScan> = read_topic(&cfg.bootstrap(), "korvid.image.scans.v1")
        .iter()
        .map(|b| Decoder::<ImageScan>::new().decode(b).expect("ImageScan"))
        .collect();
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].scanner, "trivy-operator");
    assert_eq!(
        (scans[0].registry.as_str(), scans[0].tag.as_deref()),
        ("docker.io", Some("1.25"))
    );
    assert_eq!(
        (
            scans[0].counts.critical,
            scans[0].counts.high,
            scans[0].counts.low
        ),
        (1, 2, 5)
    );
    assert_eq!(scans[0].vulnerabilities[0].cvss, Some(7.5));

    // Nothing of the planted secret left ingest.
    for topic in [
        "korvid.k8s.objects.v1",
        "korvid.k8s.events.v1",
        "korvid.deadletter.v1",
    ] {
        for v in read_topic(&cfg.bootstrap(), topic) {
            let text = String::from_utf8_lossy(&v);
            assert!(
                !text.contains(PLANT) && !text.contains(&b64(PLANT)),
                "{topic}: {text}"
            );
        }
    }

    // Pod a is deleted while ingest is down: the first list after the restart, compared with
    // what the objects topic holds, writes its deletion.
    let mut korvid = korvid;
    let (status, _) = korvid.terminate().await;
    assert!(status.success(), "{}", korvid.log_text());
    api.set_script(
        PODS,
        Script {
            lists: vec![("300".into(), vec![pod("d", "uid-d", "150", "web")])],
            watches: vec![vec![]],
        },
    );
    let korvid = Korvid::start(&cfg).await;
    let vanished = vanished_pods(&cfg).await;
    assert_eq!(vanished, 1.0, "{}", korvid.log_text());
    // The broker may have compacted older records by now, so look at the newest ones.
    let mut a = Vec::new();
    for _ in 0..100 {
        let changes = decode_changes(&read_records(&cfg.bootstrap(), "korvid.k8s.objects.v1"));
        a = history(&changes, "e2e/uid-a");
        if a.last() == Some(&None) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The key ends deleted: its newest record is a tombstone and its newest value a DELETE.
    // (tansu's compaction may leave or repeat older records around them.)
    assert_eq!(a.last(), Some(&None), "{a:?}");
    assert_eq!(
        a.iter().rev().find_map(Clone::clone),
        Some((ObjectOp::Delete, None)),
        "{a:?}\n{}",
        korvid.log_text()
    );
}

/// A Trivy report whose secret scanner found the plant (Trivy puts the match into the report).
fn trivy_with_secret_finding(digest: &str) -> Value {
    json!({"SchemaVersion": 2, "ArtifactName": "registry.example.com/shop/web:1.0",
        "Metadata": {"RepoDigests": [format!("registry.example.com/shop/web@{digest}")], "OS": {"Family": "alpine"}},
        "Results": [
            {"Target": "app", "Vulnerabilities": [{"VulnerabilityID": "CVE-2024-3094", "PkgName": "xz",
                "InstalledVersion": "5.6.0", "Severity": "CRITICAL", "CVSS": {"nvd": {"V3Score": 10.0}}}]},
            {"Target": "/app/.env", "Class": "secret", "Secrets": [{"RuleID": "generic", "Severity": "HIGH",
                "Match": format!("DB_PASSWORD={PLANT}"),
                "Code": {"Lines": [{"Content": format!("DB_PASSWORD={PLANT}")}]}}]}]})
}

/// One request as it reached [`RawReceiver`]: every header and the body's bytes.
#[derive(Clone, Debug)]
struct RawRequest {
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// A webhook and OTLP receiver that keeps requests whole (the shared `Receiver` keeps parsed
/// bodies and a few headers), so nothing a sink or the trace exporter sends goes unchecked.
struct RawReceiver {
    url: String,
    requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawReceiver {
    async fn start() -> RawReceiver {
        use axum::routing::post;
        let requests: Arc<Mutex<Vec<RawRequest>>> = Arc::default();
        let keep = |requests: Arc<Mutex<Vec<RawRequest>>>| {
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect();
                requests.lock().expect("lock").push(RawRequest {
                    path: uri.path().to_string(),
                    headers,
                    body: body.to_vec(),
                });
                "ok"
            }
        };
        let app = axum::Router::new()
            .route("/alerts", post(keep(requests.clone())))
            .route("/v1/traces", post(keep(requests.clone())));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        RawReceiver {
            url: format!("http://{addr}/alerts"),
            requests,
        }
    }

    fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().expect("lock").clone()
    }

    /// Delivered alerts, parsed.
    fn alerts(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.path == "/alerts")
            .map(|r| serde_json::from_slice(&r.body).expect("an alert is JSON"))
            .collect()
    }
}

/// Whether `bytes` hold the plant, raw or base64.
fn holds_plant(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.contains(PLANT) || text.contains(&b64(PLANT))
}

/// One lake row: its table and every column's value as text (lists and timestamps included).
type LakeRow = (String, BTreeMap<String, String>);

/// Every row of every finished Parquet file in the lake, decoded.
fn lake_rows(lake: &Path) -> Vec<LakeRow> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut rows = Vec::new();
    for path in files_under(lake) {
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let table = path
            .strip_prefix(lake)
            .ok()
            .and_then(|p| p.iter().next())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = std::fs::File::open(&path).expect("open a lake file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{}: not Parquet: {e}", path.display()));
        for batch in reader {
            let batch = batch.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let options = FormatOptions::default();
            let columns: Vec<(String, ArrayFormatter<'_>)> = batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| {
                    let shown = ArrayFormatter::try_new(c.as_ref(), &options)
                        .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), f.name()));
                    (f.name().clone(), shown)
                })
                .collect();
            for row in 0..batch.num_rows() {
                let values = columns
                    .iter()
                    .map(|(name, shown)| (name.clone(), shown.value(row).to_string()))
                    .collect();
                rows.push((table.clone(), values));
            }
        }
    }
    rows
}

/// Whether a lake row or an alert is about the planted pod.
fn about_web_0(namespace: Option<&str>, name: Option<&str>) -> bool {
    namespace == Some("shop") && name == Some("web-0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_reach_no_topic_from_any_source() {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = RawReceiver::start().await;
    let logs = dir.path().join("logs");
    let scans = dir.path().join("scans");
    let manifests = dir.path().join("manifests");
    for d in [&logs, &scans, &manifests] {
        std::fs::create_dir_all(d).expect("dir");
    }
    // The lake closes its files quickly, so the planted run's findings and alerts land in it.
    let cfg = KorvidConfig::new(dir.path(), &receiver.url).with_extra(&format!(
        "[[ingest.audit_logs]]\npath = \"{logs}/audit.log\"\npoll_ms = 50\n\n[[ingest.scan_dirs]]\npath = \"{scans}\"\npoll_ms = 50\n\n[lake]\nroll_interval_ms = 300\n",
        logs = logs.display(),
        scans = scans.display()
    ));
    let lake = dir.path().join("data/lake");
    let korvid = Korvid::start(&cfg).await;

    // 1. Scan reports of the image the pod below runs: over HTTP and into the watched
    // directory, plus a broken one.
    let scans_url = cfg.webhook_url().replace("/audit/webhook", "/scans");
    let d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    post_ok(&scans_url, trivy_with_secret_finding(d1).to_string()).await;
    std::fs::write(
        scans.join("web.json"),
        trivy_with_secret_finding(d2).to_string(),
    )
    .expect("write");
    let mut broken = trivy_with_secret_finding(d2);
    broken["Metadata"] = json!({});
    std::fs::write(scans.join("broken.json"), broken.to_string()).expect("write");

    // 2. Snapshot import of manifests, one of them broken. Pod web-0 carries the plant (an env
    // value, last-applied) and is what the rules fire on: a privileged container, and the
    // planted Secret in its environment.
    let last_applied = format!(
        "{{\"spec\":{{\"containers\":[{{\"env\":[{{\"name\":\"DB_PASSWORD\",\"value\":\"{PLANT}\"}}]}}]}}}}"
    );
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: nginx\n        env:\n        - name: DB_PASSWORD\n          value: {PLANT}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: shop\n  uid: uid-web-0\n  labels:\n    app: web\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{last_applied}'\n\
         spec:\n  containers:\n  - name: web\n    image: registry.example.com/shop/web:1.0\n    securityContext:\n      privileged: true\n    env:\n    - name: DB_PASSWORD\n      value: {PLANT}\n    - name: DB_PASSWORD_REF\n      valueFrom:\n        secretKeyRef:\n          name: db\n          key: password\n"
    );
    let secret_yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: shop\nstringData:\n  password: {PLANT}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: shop\ndata:\n  password: {PLANT}\n"
    );
    std::fs::write(manifests.join("deploy.yaml"), deployment).expect("write");
    std::fs::write(manifests.join("secret.yaml"), secret_yaml).expect("write");
    std::fs::write(
        manifests.join("broken.yaml"),
        format!("password: [{PLANT}\n"),
    )
    .expect("write");
    let import = korvid_import(&cfg, &manifests);
    let stdout = String::from_utf8_lossy(&import.stdout);
    let stderr = String::from_utf8_lossy(&import.stderr);
    assert_eq!(
        import.status.code(),
        Some(1),
        "one document refused:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("imported 4 objects from 3 files"),
        "{stdout}\n{stderr}"
    );
    assert!(!stderr.contains(PLANT), "{stderr}");
    // The audit below opens the namespace's first window, which judges what changed in it
    // since: the objects must be in enrich's inventory by then.
    let held = wait_metric(
        &cfg,
        "korvid_enrich_inventory_objects",
        "",
        4.0,
        Duration::from_secs(20),
    )
    .await;
    assert!(held >= 4.0, "{held} objects:\n{}", korvid.log_text());

    // 3. The webhook: a good batch, and one cut off mid-Secret (refused, dead-lettered).
    let at = rfc3339(now_ms());
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop",
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
            format!("{{\"stringData\":{{\"password\":\"{PLANT}\"}}}}")}},
        "data": {"password": b64(PLANT)}, "stringData": {"password": PLANT}});
    let audit_event = |id: &str| {
        json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": id, "stage": "ResponseComplete",
            "level": "RequestResponse", "verb": "create", "user": {"username": "mallory"},
            "objectRef": {"resource": "secrets", "namespace": "shop", "name": "db", "apiVersion": "v1"},
            "requestObject": secret, "responseObject": secret, "responseStatus": {"code": 201},
            "stageTimestamp": at, "requestReceivedTimestamp": at})
    };
    // Someone execs into another pod with the secret on the command line, in every shape people
    // type it (the arguments travel in the requestURI, which findings quote). Another pod: the
    // exec's high alert would inhibit the privileged container's on the same subject.
    let mut command = form_urlencoded::Serializer::new(String::new());
    for arg in [
        "sh".to_string(),
        "-c".to_string(),
        format!("PGPASSWORD={PLANT} psql postgres://app:{PLANT}@db/app && mysql -u root -p{PLANT}"),
        format!("--password={PLANT}"),
        "--token".to_string(),
        PLANT.to_string(),
        format!("Authorization: Bearer {PLANT}"),
    ] {
        command.append_pair("command", &arg);
    }
    let exec = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "plant-exec-1",
        "stage": "ResponseStarted", "level": "Request", "verb": "create", "user": {"username": "mallory"},
        "requestURI": format!("/api/v1/namespaces/shop/pods/db-0/exec?{}&container=db&stdin=true", command.finish()),
        "objectRef": {"resource": "pods", "namespace": "shop", "name": "db-0", "subresource": "exec", "apiVersion": "v1"},
        "responseStatus": {"code": 101}, "stageTimestamp": at, "requestReceivedTimestamp": at});
    let batch = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
        "items": [audit_event("plant-webhook-1"), exec]})
    .to_string();
    post_ok(&cfg.webhook_url(), batch.clone()).await;
    let cut = &batch[..batch.len() - 40];
    let resp = http()
        .post(cfg.webhook_url())
        .body(cut.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);

    // 4. Audit log file: a plain event, an EKS CloudWatch payload, a GKE entry, and an EKS
    // entry whose message is broken JSON with the plant inside.
    let eks = json!({"logGroup": "/aws/eks/prod/cluster", "logStream": "kube-apiserver-audit-1",
        "logEvents": [{"id": "1", "timestamp": 1, "message": audit_event("plant-eks-1").to_string()},
                      {"id": "2", "timestamp": 1, "message": format!("{{\"stringData\":{{\"password\":\"{PLANT}\"")}]});
    let gke = json!({"insertId": "g1", "operation": {"id": "plant-gke-1"}, "timestamp": at,
        "protoPayload": {"serviceName": "k8s.io", "methodName": "io.k8s.core.v1.secrets.create",
            "resourceName": "core/v1/namespaces/shop/secrets/db",
            "authenticationInfo": {"principalEmail": "dev@example.com"}, "request": secret, "status": {"code": 0}}});
    let aks = json!({"records": [{"category": "kube-audit", "properties": {"log": audit_event("plant-aks-1").to_string()}}]});
    let lines = format!("{}\n{eks}\n{gke}\n{aks}\n", audit_event("plant-log-1"));
    std::fs::write(logs.join("audit.log"), lines).expect("write log");

    // Every source delivered.
    wait_metric(
        &cfg,
        "korvid_ingest_audit_log_events",
        "",
        4.0,
        Duration::from_secs(20),
    )
    .await;
    wait_metric(
        &cfg,
        "korvid_ingest_scan_dir_reports",
        "",
        2.0,
        Duration::from_secs(20),
    )
    .await;
    let audit: Vec<korvid_schemas::AuditEvent> =
        read_topic(&cfg.bootstrap(), "korvid.k8s.audit.v1")
            .iter()
            .map(|b| {
                Decoder::<korvid_schemas::AuditEvent>::new()
                    .decode(b)
                    .expect("AuditEvent")
            })
            .collect();
    let mut ids: Vec<&str> = audit.iter().map(|e| e.audit_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids,
        [
            "plant-aks-1",
            "plant-eks-1",
            "plant-exec-1",
            "plant-gke-1",
            "plant-log-1",
            "plant-webhook-1"
        ],
        "{}",
        korvid.log_text()
    );
    let gke_event = audit
        .iter()
        .find(|e| e.audit_id == "plant-gke-1")
        .expect("gke");
    assert_eq!(
        (gke_event.verb.as_str(), gke_event.resource.as_deref()),
        ("create", Some("secrets"))
    );
    let image_scans: Vec<ImageScan> = read_topic(&cfg.bootstrap(), "korvid.image.scans.v1")
        .iter()
        .map(|b| Decoder::<ImageScan>::new().decode(b).expect("ImageScan"))
        .collect();
    let mut digests: Vec<&str> = image_scans
        .iter()
        .map(|s| s.image_digest.as_str())
        .collect();
    digests.sort_unstable();
    assert_eq!(digests, [d1, d2]);
    assert_eq!(image_scans[0].counts.critical, 1);
    let objects: Vec<ObjectChange> = read_topic(&cfg.bootstrap(), "korvid.k8s.objects.v1")
        .iter()
        .map(|b| {
            Decoder::<ObjectChange>::new()
                .decode(b)
                .expect("ObjectChange")
        })
        .collect();
    assert_eq!(objects.len(), 4);

    // The planted pod was judged: an alert about it was delivered (so the checks below read
    // real alerts), and its finding and alert reached the lake.
    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts = loop {
        let alerts = receiver.alerts();
        let about = |a: &Value| {
            about_web_0(
                a["alert"]["subject"]["namespace"].as_str(),
                a["alert"]["subject"]["name"].as_str(),
            )
        };
        // The privileged container, and the exec whose request quotes the command line.
        let exec_alerted = alerts.iter().any(|a| {
            a["alert"]["rule_id"] == "KOR-0001" && a["alert"]["subject"]["name"] == "db-0"
        });
        if alerts.iter().any(about) && exec_alerted {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "no alert about shop/web-0 or no exec alert about shop/db-0: {alerts:?}\n{}",
            korvid.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rules: BTreeSet<&str> = alerts
        .iter()
        .filter(|a| a["alert"]["subject"]["name"] == "web-0")
        .filter_map(|a| a["alert"]["rule_id"].as_str())
        .collect();
    assert!(
        rules.contains("KOR-0101"),
        "privileged container: {rules:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = lake_rows(&lake);
        let landed = |table: &str| {
            rows.iter().any(|(t, row)| {
                t == table
                    && about_web_0(
                        row.get("subject_namespace").map(String::as_str),
                        row.get("subject_name").map(String::as_str),
                    )
            })
        };
        if landed("findings") && landed("alerts") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no finding and alert about shop/web-0 in the lake: {rows:?}\n{}",
            korvid.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = read_topic(&cfg.bootstrap(), "korvid.deadletter.v1");
    assert!(
        dead.len() >= 4,
        "webhook cut, EKS message, broken scan, broken manifest: {}",
        dead.len()
    );

    // ...and nothing of the plant, raw or base64, is in any topic or the log.
    for topic in [
        "korvid.k8s.objects.v1",
        "korvid.k8s.audit.v1",
        "korvid.k8s.events.v1",
        "korvid.image.scans.v1",
        "korvid.graph.windows.v1",
        "korvid.findings.v1",
        "korvid.alerts.v1",
        "korvid.notify.state.v1",
        "korvid.deadletter.v1",
    ] {
        for v in read_topic(&cfg.bootstrap(), topic) {
            assert!(!holds_plant(&v), "{topic}: {}", String::from_utf8_lossy(&v));
        }
    }
    // Nor in the metrics.
    let metrics = http()
        .get(cfg.telemetry_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("korvid_ingest_audit_log_events"));
    assert!(!holds_plant(metrics.as_bytes()), "metrics: {metrics}");

    // Stopped, korvid has flushed every sink, the lake and the trace exporter.
    let mut korvid = korvid;
    let (status, _) = korvid.terminate().await;
    assert!(status.success(), "{}", korvid.log_text());
    let log = korvid.log_text();
    assert!(!holds_plant(log.as_bytes()), "log: {log}");

    // Nor in what the sinks delivered (bodies and headers) or the exported traces.
    for r in receiver.requests() {
        let body = String::from_utf8_lossy(&r.body);
        assert!(!holds_plant(&r.body), "{}: {body}", r.path);
        for (name, value) in &r.headers {
            assert!(
                !holds_plant(value),
                "{}: header {name}: {}",
                r.path,
                String::from_utf8_lossy(value)
            );
        }
        if r.path == "/alerts" {
            // Parsed and printed again: no escape sequence hides it either.
            let parsed: Value = serde_json::from_slice(&r.body).expect("JSON");
            assert!(!holds_plant(parsed.to_string().as_bytes()), "{parsed}");
        }
    }

    // Nor in the lake: every file's bytes (Parquet statistics and dictionaries included), and
    // every column of every row decoded.
    let files = files_under(&lake);
    assert!(!files.is_empty(), "the lake wrote nothing");
    for f in &files {
        let bytes = std::fs::read(f).expect("read a lake file");
        assert!(!holds_plant(&bytes), "{}", f.display());
    }
    let rows = lake_rows(&lake);
    for table in ["findings", "alerts"] {
        assert!(
            rows.iter().any(|(t, row)| t == table
                && about_web_0(
                    row.get("subject_namespace").map(String::as_str),
                    row.get("subject_name").map(String::as_str)
                )),
            "{table}: no row about shop/web-0"
        );
    }
    for (table, row) in &rows {
        for (column, value) in row {
            assert!(
                !holds_plant(value.as_bytes()),
                "lake {table}.{column}: {value}"
            );
        }
    }
}
