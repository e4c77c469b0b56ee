//! Stage benchmarks, each next to a baseline measured in the same run (ratios, since these
//! machines are noisy). Run with `make bench`; prints a table, and writes BENCHMARKS.md when
//! KORVID_BENCH_OUT names a file.
//!
//! | stage | korvid | baseline |
//! |---|---|---|
//! | ingest.parse | audit EventList -> sanitised AuditEvents | serde_json::Value parse of the same bytes |
//! | ingest.objects | watched pods -> sanitised ObjectChanges (managedFields, env, annotations) | serde_json clone + serialise of the same pods |
//! | ingest.managed | GKE Cloud Audit Logs entries -> AuditEvents | the same events as Kubernetes audit JSON |
//! | codec | Avro single-object encode+decode | serde_json encode+decode of the same struct |
//! | enrich.window | DataFusion activity + graph tables + IPC | hand-written HashMap group-by |
//! | enrich.pipeline | Avro decode + event-time windows + DataFusion tables + IPC, one thread | Avro decode alone |
//! | enrich.inventory | 10,000-pod cluster applied + graph built (memory printed as a note) | serde_json parse of the same objects |
//! | detect.rules | the whole catalog over one busy namespace window with its inventory, one core (activity rows/s) | IPC decode + one hand-written filter |
//! | kafka.produce | RecordProducer (Avro, acks=all, idempotent) | raw rdkafka FutureProducer, same bytes |
//! | notify.route | (notify/benches/route.rs, appended by `make bench`) | |
//! | ingest.webhook | POSTed EventLists -> parsed, sanitised, produced, acknowledged | raw rdkafka FutureProducer sending the same events pre-encoded |

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use korvid_enrich::tables::ActivityAggregator;
use korvid_enrich::windows::{ClosedWindow, WindowAssigner, WindowConfig};
use korvid_ingest::audit::parse_body;
use korvid_ingest::sanitize::Sanitizer;
use korvid_schemas::codec::{Decoder, Framing, encode};
use korvid_schemas::*;

const EVENTS: usize = 5_000;

/// (user, verb, resource, subresource, name): the baseline's group-by key.
type GroupKey<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

const OBJECTS: usize = 2_000;

/// A pod as the API server returns it: managedFields, last-applied annotation, env values.
fn realistic_pod(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("web-{i}"), "namespace": format!("ns{}", i % 7),
            "uid": format!("0f3b2c1d-{i:04}-4e5f-8a9b-0c1d2e3f4a5b"), "resourceVersion": format!("{}", 1000 + i),
            "labels": {"app": "web", "pod-template-hash": "6f7d9"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"spec\":{\"containers\":[{\"env\":[{\"name\":\"DB_PASSWORD\",\"value\":\"x\"}]}]}}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6f7d9", "uid": "r1", "controller": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {"f:image": {}}}}}}]},
        "spec": {"serviceAccountName": "web", "nodeName": format!("node-{}", i % 5),
            "containers": [{"name": "web", "image": "registry.example.com/shop/web:1.4.2",
                "ports": [{"containerPort": 8080}],
                "env": [{"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}}],
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false},
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
            "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]},
        "status": {"phase": "Running", "podIP": format!("10.1.{}.{}", i % 250, i % 200), "hostIP": "10.0.0.5"}
    })
}

/// The same audit event as GKE's Cloud Audit Logs would export it.
fn as_gke_entry(ev: &serde_json::Value) -> serde_json::Value {
    let r = &ev["objectRef"];
    let ns = r["namespace"].as_str().unwrap_or("default");
    let res = r["resource"].as_str().unwrap_or("pods");
    let name = r["name"].as_str().unwrap_or("x");
    let verb = ev["verb"].as_str().unwrap_or("get");
    let (method, resource_name) = match r["subresource"].as_str() {
        Some(sub) => (
            format!("io.k8s.core.v1.{res}.{sub}.{verb}"),
            format!("core/v1/namespaces/{ns}/{res}/{name}/{sub}"),
        ),
        None => (
            format!("io.k8s.core.v1.{res}.{verb}"),
            format!("core/v1/namespaces/{ns}/{res}/{name}"),
        ),
    };
    serde_json::json!({
        "insertId": ev["auditID"], "operation": {"id": ev["auditID"], "producer": "k8s.io"},
        "timestamp": ev["stageTimestamp"], "labels": ev["annotations"],
        "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "serviceName": "k8s.io", "methodName": method, "resourceName": resource_name,
            "authenticationInfo": {"principalEmail": ev["user"]["username"]},
            "requestMetadata": {"callerIp": ev["sourceIPs"][0], "callerSuppliedUserAgent": ev["userAgent"]},
            "status": {"code": 0}}
    })
}

/// Resident set size of this process (Linux), for memory figures.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A cluster of `pods` realistic pods in 50 namespaces, each namespace with its service
/// accounts, a role and binding, and services.
fn simulated_cluster(pods: usize) -> Vec<ObjectChange> {
    let change = |v: serde_json::Value| {
        let meta = &v["metadata"];
        ObjectChange {
            cluster: "bench".into(),
            event_time: 0,
            op: ObjectOp::Snapshot,
            uid: meta["uid"].as_str().unwrap_or_default().into(),
            api_version: v["apiVersion"].as_str().unwrap_or("v1").into(),
            kind: v["kind"].as_str().unwrap_or_default().into(),
            namespace: meta["namespace"].as_str().map(str::to_string),
            name: meta["name"].as_str().unwrap_or_default().into(),
            resource_version: None,
            labels: meta["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            object_json: Some(v.to_string()),
        }
    };
    let mut out = Vec::new();
    for n in 0..50 {
        let ns = format!("ns{n}");
        out.push(change(
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "web", "namespace": ns, "uid": format!("sa-{n}")}}),
        ));
        out.push(change(serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "app", "namespace": ns, "uid": format!("role-{n}")},
            "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list"]}]})));
        out.push(change(
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "app", "namespace": ns, "uid": format!("rb-{n}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app"},
            "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": ns}]}),
        ));
        out.push(change(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns, "uid": format!("svc-{n}")},
            "spec": {"type": if n % 10 == 0 { "LoadBalancer" } else { "ClusterIP" }, "selector": {"app": "web"}}})));
    }
    for i in 0..pods {
        let mut pod = realistic_pod(i);
        pod["metadata"]["labels"]["app"] = "web".into();
        pod["metadata"]["namespace"] = format!("ns{}", i % 50).into();
        out.push(change(pod));
    }
    out
}

fn event_list(n: usize) -> String {
    let base = 1_795_680_000_000i64;
    let items: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let (verb, res, sub, user) = match i % 10 {
                0 => ("create", "pods", Some("exec"), "dev-jane"),
                1 | 2 => ("get", "secrets", None, "system:serviceaccount:ci:runner"),
                3 => ("list", "pods", None, "system:kube-scheduler"),
                _ => ("watch", "configmaps", None, "system:serviceaccount:kube-system:operator"),
            };
            let ms = base + (i as i64 % 2000);
            serde_json::json!({
                "level": "Metadata", "auditID": format!("id-{i}"), "stage": "ResponseComplete",
                "requestURI": format!("/api/v1/namespaces/ns{}/{res}/obj{}", i % 7, i % 50),
                "verb": verb, "user": {"username": user, "groups": ["system:authenticated"]},
                "sourceIPs": [format!("10.0.{}.{}", i % 3, i % 200)], "userAgent": "kubectl/v1.31",
                "objectRef": {"resource": res, "namespace": format!("ns{}", i % 7),
                              "name": format!("obj{}", i % 50), "apiVersion": "v1", "subresource": sub},
                "responseStatus": {"code": 200},
                "requestReceivedTimestamp": format!("2026-11-26T08:00:00.{:06}Z", ms % 1000 * 1000),
                "stageTimestamp": format!("2026-11-26T08:00:0{}.{:06}Z", (ms / 1000) % 2, ms % 1000 * 1000),
                "annotations": {"authorization.k8s.io/decision": "allow"}
            })
        })
        .collect();
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
        .to_string()
}

/// (weight, verb, resource, subresource, user, which names): one line of a traffic mix.
type Traffic = (
    u32,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
);

/// One busy namespace's audit traffic in one window, shaped like a real cluster's (weights
/// after the verb/resource mix of recorded benign clusters): kubelets reading their pods'
/// secrets and patching status, operators renewing leases and watching configmaps, controllers
/// writing endpoint slices, events and status, people with kubectl, a CI deployer, and a
/// little rare activity (exec, logs). Objects are the simulated cluster's, so the inventory
/// around the window is real.
fn namespace_traffic(n: usize, ns_index: usize) -> Vec<AuditEvent> {
    let ns = format!("ns{ns_index}");
    let mix: &[Traffic] = &[
        (
            110,
            "get",
            "leases",
            None,
            "system:serviceaccount:{ns}:operator",
            "lease",
        ),
        (
            110,
            "update",
            "leases",
            None,
            "system:serviceaccount:{ns}:operator",
            "lease",
        ),
        (90, "get", "pods", None, "system:node:{node}", "pod"),
        (
            60,
            "patch",
            "pods",
            Some("status"),
            "system:node:{node}",
            "pod",
        ),
        (90, "get", "secrets", None, "system:node:{node}", "secret"),
        (
            30,
            "get",
            "secrets",
            None,
            "system:serviceaccount:{ns}:web",
            "secret",
        ),
        (
            40,
            "watch",
            "configmaps",
            None,
            "system:serviceaccount:{ns}:operator",
            "none",
        ),
        (
            40,
            "list",
            "configmaps",
            None,
            "system:serviceaccount:{ns}:operator",
            "none",
        ),
        (50, "create", "events", None, "system:node:{node}", "event"),
        (
            30,
            "patch",
            "events",
            None,
            "system:serviceaccount:kube-system:replicaset-controller",
            "event",
        ),
        (
            60,
            "update",
            "endpointslices",
            None,
            "system:serviceaccount:kube-system:endpointslice-controller",
            "service",
        ),
        (
            30,
            "get",
            "services",
            None,
            "system:serviceaccount:{ns}:web",
            "service",
        ),
        (
            30,
            "get",
            "endpoints",
            None,
            "system:serviceaccount:{ns}:web",
            "service",
        ),
        (
            25,
            "update",
            "deployments",
            Some("status"),
            "system:serviceaccount:kube-system:deployment-controller",
            "deploy",
        ),
        (
            25,
            "update",
            "replicasets",
            Some("status"),
            "system:serviceaccount:kube-system:replicaset-controller",
            "deploy",
        ),
        (25, "get", "pods", None, "alice", "pod"),
        (15, "list", "pods", None, "alice", "none"),
        (
            30,
            "create",
            "serviceaccounts",
            Some("token"),
            "system:node:{node}",
            "sa",
        ),
        (30, "get", "configmaps", None, "alice", "configmap"),
        (20, "patch", "deployments", None, "ci-deployer", "deploy"),
        (
            10,
            "create",
            "pods",
            None,
            "system:serviceaccount:kube-system:replicaset-controller",
            "none",
        ),
        (
            10,
            "delete",
            "pods",
            None,
            "system:serviceaccount:kube-system:replicaset-controller",
            "pod",
        ),
        (
            10,
            "get",
            "persistentvolumeclaims",
            None,
            "system:node:{node}",
            "pvc",
        ),
        (10, "get", "rolebindings", None, "alice", "binding"),
        (5, "get", "pods", Some("log"), "alice", "pod"),
        (3, "create", "pods", Some("exec"), "alice", "pod"),
        (2, "create", "pods", Some("portforward"), "alice", "pod"),
    ];
    let total: u32 = mix.iter().map(|m| m.0).sum();
    let base = 1_795_680_000_000i64;
    (0..n)
        .map(|i| {
            // A fixed, spread-out walk through the mix (no RNG dependency).
            let mut pick = ((i as u64 * 2_654_435_761) % u64::from(total)) as u32;
            let &(_, verb, resource, subresource, user, names) = mix
                .iter()
                .find(|m| {
                    if pick < m.0 {
                        true
                    } else {
                        pick -= m.0;
                        false
                    }
                })
                .unwrap_or(&mix[0]);
            // Pods of this namespace in the simulated cluster: web-{k} with k % 50 == ns_index.
            let pod = format!("web-{}", ns_index + 50 * (i % 40));
            let node = format!("node-{}", (ns_index + 50 * (i % 40)) % 5);
            let name = match names {
                "pod" => Some(pod.clone()),
                "lease" => Some(format!("operator-{}", i % 3)),
                "secret" => Some(["api", "db", "tls"][i % 3].to_string()),
                "event" => Some(format!("{pod}.17a{:x}", i % 97)),
                "service" | "deploy" | "sa" | "configmap" | "binding" | "pvc" => {
                    Some("web".to_string())
                }
                _ => None,
            };
            let user = user.replace("{ns}", &ns).replace("{node}", &node);
            let mut uri = format!("/api/v1/namespaces/{ns}/{resource}");
            if let Some(n) = &name {
                uri.push('/');
                uri.push_str(n);
            }
            if let Some(s) = subresource {
                uri.push('/');
                uri.push_str(s);
            }
            match verb {
                "watch" => {
                    uri.push_str("?allowWatchBookmarks=true&resourceVersion=6578368&watch=true")
                }
                "list" if user.starts_with("system:") => {
                    uri.push_str("?limit=500&resourceVersion=0")
                }
                _ => {}
            }
            let ms = base + (i as i64 * 2000 / n as i64);
            AuditEvent {
                cluster: "bench".into(),
                event_time: ms * 1000,
                audit_id: format!("ns-{i}"),
                stage: "ResponseComplete".into(),
                level: "Metadata".into(),
                verb: verb.into(),
                request_uri: uri,
                groups: vec!["system:authenticated".into()],
                impersonated_user: None,
                source_ips: vec![if user.starts_with("system:node:") {
                    format!("10.0.0.{}", 10 + (i % 5))
                } else {
                    format!("10.2.{}.{}", i % 3, i % 200)
                }],
                user_agent: Some(if user.starts_with("system:") {
                    "kube-controller/v1.31.0".into()
                } else {
                    "kubectl/v1.31.0".into()
                }),
                api_group: match resource {
                    "leases" => Some("coordination.k8s.io".into()),
                    "endpointslices" => Some("discovery.k8s.io".into()),
                    "deployments" | "replicasets" => Some("apps".into()),
                    "rolebindings" => Some("rbac.authorization.k8s.io".into()),
                    _ => None,
                },
                api_version: Some("v1".into()),
                resource: Some(resource.into()),
                subresource: subresource.map(str::to_string),
                namespace: Some(ns.clone()),
                name,
                response_code: Some(if verb == "create" { 201 } else { 200 }),
                annotations: Default::default(),
                request_object: None,
                user,
            }
        })
        .collect()
}

/// Median seconds per iteration over `runs` runs of `iters` iterations.
fn time<F: FnMut()>(runs: usize, iters: usize, mut f: F) -> f64 {
    f();
    let samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    median(samples)
}

struct Row {
    stage: &'static str,
    unit: &'static str,
    items: usize,
    korvid: f64,
    baseline: f64,
}

fn print(rows: &[Row]) -> String {
    let mut out = String::from(
        "| stage | items/iter | korvid (items/s) | baseline (items/s) | korvid time / baseline time |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} {} | {:.0} | {:.0} | {:.2} |\n",
            r.stage,
            r.items,
            r.unit,
            r.items as f64 / r.korvid,
            r.items as f64 / r.baseline,
            r.korvid / r.baseline
        ));
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let body = event_list(EVENTS);
    let sanitizer = Sanitizer::new(b"bench-key-0123456789");

    // ingest.parse
    let korvid = time(5, 3, || {
        black_box(parse_body(body.as_bytes(), "bench", &sanitizer).expect("parse"));
    });
    let baseline = time(5, 3, || {
        black_box(serde_json::from_str::<serde_json::Value>(&body).expect("json"));
    });
    rows.push(Row {
        stage: "ingest.parse",
        unit: "events",
        items: EVENTS,
        korvid,
        baseline,
    });

    // ingest.objects: watched objects -> sanitised ObjectChanges
    let pods: Vec<serde_json::Value> = (0..OBJECTS).map(realistic_pod).collect();
    let korvid = time(5, 3, || {
        for p in &pods {
            black_box(
                korvid_ingest::objects::object_change(
                    "bench",
                    ObjectOp::Snapshot,
                    p.clone(),
                    None,
                    &sanitizer,
                    0,
                )
                .expect("object"),
            );
        }
    });
    let baseline = time(5, 3, || {
        for p in &pods {
            black_box(p.clone().to_string());
        }
    });
    rows.push(Row {
        stage: "ingest.objects",
        unit: "objects",
        items: OBJECTS,
        korvid,
        baseline,
    });

    // ingest.managed: GKE Cloud Audit Logs entries vs the same events as Kubernetes JSON
    let plain: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(&body)
        .expect("json")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let gke: Vec<serde_json::Value> = plain.iter().map(as_gke_entry).collect();
    let korvid = time(5, 3, || {
        let b = korvid_ingest::audit::parse_value(
            serde_json::Value::Array(gke.clone()),
            true,
            "bench",
            &sanitizer,
        )
        .expect("gke");
        assert_eq!(b.events.len(), EVENTS, "{:?}", b.rejected.first());
        black_box(b);
    });
    let baseline = time(5, 3, || {
        black_box(
            korvid_ingest::audit::parse_value(
                serde_json::Value::Array(plain.clone()),
                true,
                "bench",
                &sanitizer,
            )
            .expect("plain"),
        );
    });
    rows.push(Row {
        stage: "ingest.managed",
        unit: "events",
        items: EVENTS,
        korvid,
        baseline,
    });

    let events = parse_body(body.as_bytes(), "bench", &sanitizer)
        .expect("parse")
        .events;

    // codec
    let decoder = Decoder::<AuditEvent>::new();
    let korvid = time(5, 3, || {
        for e in &events {
            let b = encode(e, Framing::SingleObject).expect("encode");
            black_box(decoder.decode(&b).expect("decode"));
        }
    });
    let baseline = time(5, 3, || {
        for e in &events {
            let b = serde_json::to_vec(e).expect("json");
            black_box(serde_json::from_slice::<AuditEvent>(&b).expect("json"));
        }
    });
    rows.push(Row {
        stage: "codec (encode+decode)",
        unit: "records",
        items: EVENTS,
        korvid,
        baseline,
    });

    // enrich.window
    let agg = rt.block_on(ActivityAggregator::new()).expect("aggregator");
    let window = ClosedWindow {
        key: "bench/ns".into(),
        cluster: "bench".into(),
        start: 0,
        end: 2000,
        events: events.clone(),
        offsets: vec![],
        traces: Vec::new(),
        early: false,
    };
    let korvid = time(5, 3, || {
        black_box(
            rt.block_on(agg.graph_window(&window, None))
                .expect("window"),
        );
    });
    let baseline = time(5, 3, || {
        let mut groups: HashMap<GroupKey<'_>, (i64, i64, i64)> = HashMap::new();
        for e in &events {
            let g = groups
                .entry((
                    e.user.as_str(),
                    e.verb.as_str(),
                    e.resource.as_deref(),
                    e.subresource.as_deref(),
                    e.name.as_deref(),
                ))
                .or_insert((0, i64::MAX, i64::MIN));
            g.0 += 1;
            g.1 = g.1.min(e.event_time);
            g.2 = g.2.max(e.event_time);
        }
        black_box(groups);
    });
    rows.push(Row {
        stage: "enrich.window",
        unit: "events",
        items: EVENTS,
        korvid,
        baseline,
    });

    // enrich.pipeline: Avro bytes -> decode -> event-time windows -> DataFusion tables + IPC
    let encoded: Vec<Vec<u8>> = events
        .iter()
        .map(|e| encode(e, Framing::SingleObject).expect("encode"))
        .collect();
    let korvid = time(5, 3, || {
        let mut assigner = WindowAssigner::new(WindowConfig {
            size_ms: 2_000,
            lateness_ms: 1_000,
            idle_flush: Duration::from_secs(60),
            early_fire: None,
            max_buffered: 1_000_000,
        });
        let tp = ("bench".to_string(), 0);
        let now = Instant::now();
        for (i, b) in encoded.iter().enumerate() {
            let e = decoder.decode(b).expect("decode");
            let key = format!(
                "{}/{}",
                e.cluster,
                e.namespace.as_deref().unwrap_or("_cluster")
            );
            black_box(assigner.admit(&key, e, &tp, i as i64, now, None));
        }
        for w in assigner.flush_all() {
            black_box(rt.block_on(agg.graph_window(&w, None)).expect("window"));
        }
    });
    let baseline = time(5, 3, || {
        for b in &encoded {
            black_box(decoder.decode(b).expect("decode"));
        }
    });
    rows.push(Row {
        stage: "enrich.pipeline (1 thread)",
        unit: "events",
        items: EVENTS,
        korvid,
        baseline,
    });

    // enrich.inventory: a 10,000-pod cluster applied and turned into its graph
    let cluster = simulated_cluster(10_000);
    let rss_before = rss_bytes();
    let mut inventory = korvid_enrich::inventory::Inventory::default();
    for c in &cluster {
        inventory.apply(c);
    }
    let rss_after = rss_bytes();
    let graph = inventory.graph();
    notes.push(format!(
        "enrich.inventory: {} objects (10,000 pods) held in ~{:.0} MB (inventory estimate) / {:.0} MB \
         (process RSS growth); graph {} entities, {} relations",
        cluster.len(),
        inventory.size().bytes as f64 / 1e6,
        rss_after.saturating_sub(rss_before) as f64 / 1e6,
        graph.entities.len(),
        graph.relations.len()
    ));
    drop(graph);
    let korvid = time(3, 1, || {
        let mut inv = korvid_enrich::inventory::Inventory::default();
        for c in &cluster {
            inv.apply(c);
        }
        black_box(inv.graph());
    });
    let baseline = time(3, 1, || {
        for c in &cluster {
            black_box(
                serde_json::from_str::<serde_json::Value>(c.object_json.as_deref().unwrap_or("{}"))
                    .expect("json"),
            );
        }
    });
    rows.push(Row {
        stage: "enrich.inventory (apply + graph)",
        unit: "objects",
        items: cluster.len(),
        korvid,
        baseline,
    });

    // detect.rules: one busy namespace's window with the inventory around it, as the stream
    // builds it (the simulated 10,000-pod cluster; two relations around what was touched).
    let mut inventory = korvid_enrich::inventory::Inventory::default();
    for c in &cluster {
        inventory.apply(c);
    }
    let graph = inventory.graph();
    let adjacency = graph.adjacency();
    let traffic = namespace_traffic(EVENTS, 3);
    let around =
        graph.neighbourhood_in(&adjacency, &korvid_enrich::tables::touched_ids(&traffic), 2);
    let busy = ClosedWindow {
        key: "bench/ns3".into(),
        cluster: "bench".into(),
        start: 0,
        end: 2000,
        events: traffic,
        offsets: vec![],
        traces: Vec::new(),
        early: false,
    };
    let record = rt
        .block_on(agg.graph_window(&busy, Some(&around)))
        .expect("window");
    // Per core: the catalog on a single-threaded runtime. The same on the 2-thread runtime
    // (rules of one window run concurrently) and with the prefilter off are notes.
    let one_core = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let load = || korvid_detect::RuleCatalog::load(true, &[], &[]);
    let rules = load().rules.len();
    let engine = one_core
        .block_on(korvid_detect::RuleEngine::new(load()))
        .expect("engine");
    let unfiltered = one_core
        .block_on(korvid_detect::RuleEngine::new(load()))
        .expect("engine")
        .without_prefilter();
    let two_threads = rt
        .block_on(korvid_detect::RuleEngine::new(load()))
        .expect("engine");
    let with = one_core
        .block_on(engine.evaluate(&record, 0))
        .expect("evaluate");
    let without = one_core
        .block_on(unfiltered.evaluate(&record, 0))
        .expect("evaluate");
    let ids = |e: &korvid_detect::engine::Evaluation| {
        let mut v: Vec<String> = e.findings.iter().map(|f| f.id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&with),
        ids(&without),
        "the prefilter changed the findings"
    );
    let korvid = time(5, 5, || {
        black_box(
            one_core
                .block_on(engine.evaluate(&record, 0))
                .expect("evaluate"),
        );
    });
    let all_rules = time(5, 5, || {
        black_box(
            one_core
                .block_on(unfiltered.evaluate(&record, 0))
                .expect("evaluate"),
        );
    });
    let both_threads = time(5, 5, || {
        black_box(
            rt.block_on(two_threads.evaluate(&record, 0))
                .expect("evaluate"),
        );
    });
    let baseline = time(5, 5, || {
        use arrow::array::{Array, StringArray};
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&record.activity), None)
                .expect("ipc");
        let mut hits = 0;
        for batch in reader {
            let batch = batch.expect("batch");
            let sub = batch.column_by_name("subresource").expect("col");
            let sub = sub.as_any().downcast_ref::<StringArray>().expect("str");
            hits += (0..sub.len())
                .filter(|i| sub.is_valid(*i) && sub.value(*i) == "exec")
                .count();
        }
        black_box(hits);
    });
    let count_rows = |bytes: &[u8]| -> usize {
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("ipc")
            .map(|b| b.expect("batch").num_rows())
            .sum()
    };
    let activity_rows = count_rows(&record.activity);
    let (node_rows, edge_rows) = (count_rows(&record.nodes), count_rows(&record.edges));
    rows.push(Row {
        stage: "detect.rules (whole catalog)",
        unit: "activity rows",
        items: activity_rows,
        korvid,
        baseline,
    });
    let rate = |secs: f64| activity_rows as f64 / secs;
    let note = format!(
        "detect.rules: {rules} rules over one namespace window of {EVENTS} events ({activity_rows} activity rows, \
         {node_rows} nodes, {edge_rows} edges with the inventory around them): {:.0} activity rows/s on one \
         core; {} rules ruled out by the window's contents ({} findings, identical without the prefilter, \
         which runs every rule: {:.0} rows/s on one core); on the 2-thread runtime {:.0} rows/s",
        rate(korvid),
        with.skipped_rules,
        with.findings.len(),
        rate(all_rules),
        rate(both_threads)
    );
    println!("{note}");
    notes.push(note);

    // kafka.produce against a real broker, when one is installed.
    match korvid_common::broker::find_binary(&Default::default()) {
        Ok(_) => rows.extend(rt.block_on(produce_bench(&events))),
        Err(e) => println!("kafka.produce skipped: {e}"),
    }

    let mut table = print(&rows);
    for n in &notes {
        table.push_str(&format!("\n- {n}\n"));
    }
    println!("\n{table}");
    if let Ok(path) = std::env::var("KORVID_BENCH_OUT") {
        let doc = format!(
            "# Benchmarks\n\nWritten by `make bench` ({cores} cores, {date}). Each korvid stage runs next to a \
             baseline in the same process and run; the last column is the ratio of their times per item \
             (lower is better; 1.0 = as fast as the baseline). Medians of 5 runs (3 for Kafka). \
             Baselines are described in `benches/stages.rs`.\n\n{table}",
            cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            date = std::env::var("KORVID_BENCH_DATE").unwrap_or_else(|_| "date unknown".into()),
        );
        match std::fs::write(&path, doc) {
            Ok(()) => println!("written {path}"),
            Err(e) => eprintln!("cannot write {path}: {e}"),
        }
    }
}

async fn produce_bench(events: &[AuditEvent]) -> Vec<Row> {
    use korvid_common::broker::{BrokerSettings, LocalBroker};
    use korvid_common::kafka::{KafkaContext, KafkaSettings};
    use rdkafka::producer::FutureProducer;
    let dir = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let settings = BrokerSettings {
        listen: format!("127.0.0.1:{port}"),
        binary: None,
        storage: "memory".into(),
    };
    let broker = LocalBroker::start(&settings, dir.path())
        .await
        .expect("broker");
    let telemetry = korvid_common::Telemetry::new();
    let kafka = KafkaContext::new(
        KafkaSettings {
            topic_prefix: "bench".into(),
            ..Default::default()
        },
        broker.bootstrap.clone(),
        &telemetry,
    );
    kafka
        .wait_for_broker(Duration::from_secs(20))
        .await
        .expect("broker up");
    kafka.ensure_topics().await.expect("topics");
    let producer = kafka.producer().expect("producer");
    let topic = kafka.topics.audit.clone();
    let n = events.len() * 4;
    let mut korvid = Vec::new();
    let mut baseline = Vec::new();
    let raw: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .expect("raw producer");
    let payloads: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            (
                korvid_ingest::audit::partition_key(e),
                encode(e, Framing::SingleObject).expect("encode"),
            )
        })
        .collect();
    for _ in 0..3 {
        let t = Instant::now();
        let sends = events.iter().cycle().take(n).map(|e| {
            let key = korvid_ingest::audit::partition_key(e);
            let p = producer.clone();
            let topic = topic.clone();
            let e = e.clone();
            async move { p.send(&topic, &key, &e).await }
        });
        for r in futures::future::join_all(sends).await {
            r.expect("produce");
        }
        korvid.push(t.elapsed().as_secs_f64());

        baseline.push(raw_produce(&raw, &topic, payloads.iter().cycle().take(n)).await);
    }
    let produce = Row {
        stage: "kafka.produce (tansu, memory)",
        unit: "records",
        items: n,
        korvid: median(korvid),
        baseline: median(baseline),
    };
    let intake = webhook_bench(&kafka, &raw, &topic).await;
    broker.stop(Duration::from_secs(2)).await;
    vec![produce, intake]
}

/// Audit events of about 1 KB, from the benign corpus next to the checkout when it is there.
fn realistic_bodies() -> (Vec<String>, usize, &'static str) {
    let csv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpora/perfspec-benign-audit/audit-logs.csv"
    );
    let rows: Vec<Vec<String>> = std::fs::read_to_string(csv)
        .map(|text| {
            text.lines()
                .filter_map(|l| {
                    // The first column is quoted JSON with commas; the rest are plain.
                    let rest = l.split_once("\",")?.1;
                    Some(rest.split(',').map(str::to_string).collect::<Vec<_>>())
                })
                .filter(|r| r.len() >= 11)
                .collect()
        })
        .unwrap_or_default();
    let source = if rows.is_empty() {
        "synthetic"
    } else {
        "perfspec-benign-audit"
    };
    let pick = |i: usize| -> serde_json::Value {
        let (user, verb, resource, name, uri, code) = match rows.get(i % rows.len().max(1)) {
            Some(r) => (
                r[1].clone(),
                r[2].clone(),
                r[3].clone(),
                r[5].clone(),
                r[7].clone(),
                r[10].clone(),
            ),
            None => (
                "system:serviceaccount:kube-system:operator".into(),
                "watch".into(),
                "configmaps".into(),
                format!("cm-{i}"),
                format!("/api/v1/namespaces/ns{}/configmaps?watch=true", i % 7),
                "200".into(),
            ),
        };
        let ns = uri
            .split("/namespaces/")
            .nth(1)
            .and_then(|r| r.split(['/', '?']).next())
            .unwrap_or("default")
            .to_string();
        serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": format!("bench-{i:08}-5f0c-4a4e-9c55-6d2b8f1e3a77"), "stage": "ResponseComplete",
            "requestURI": uri, "verb": verb,
            "user": {"username": user, "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "sourceIPs": ["10.244.1.17"], "userAgent": "kube-controller-manager/v1.26.1 (linux/amd64) kubernetes/8f94681/system:serviceaccount:kube-system:generic-garbage-collector",
            "objectRef": {"resource": resource, "namespace": ns, "name": name, "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": code.parse::<i32>().unwrap_or(200)},
            "requestReceivedTimestamp": "2026-11-26T08:00:01.102030Z", "stageTimestamp": "2026-11-26T08:00:01.105060Z",
            "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding \"system:controller:generic-garbage-collector\" of ClusterRole \"system:controller:generic-garbage-collector\" to ServiceAccount \"generic-garbage-collector/kube-system\""}
        })
    };
    const BATCH: usize = 400;
    let events: Vec<serde_json::Value> = (0..EVENTS * 4).map(pick).collect();
    let size = events.iter().map(|e| e.to_string().len()).sum::<usize>() / events.len();
    let bodies = events
        .chunks(BATCH)
        .map(|c| {
            serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": c})
                .to_string()
        })
        .collect();
    (bodies, size, source)
}

/// The whole intake path (HTTP, parse, sanitise, encode, produce, acknowledge) against a raw
/// producer sending the same events pre-encoded.
async fn webhook_bench(
    kafka: &korvid_common::kafka::KafkaContext,
    raw: &rdkafka::producer::FutureProducer,
    topic: &str,
) -> Row {
    let (bodies, size, source) = realistic_bodies();
    let n: usize = bodies.len() * 400;
    println!("ingest.webhook: {n} events of ~{size} bytes from {source}, 2 concurrent clients");
    let ctx = korvid_common::ServiceContext {
        kafka: kafka.clone(),
        telemetry: korvid_common::Telemetry::new(),
        shutdown: korvid_common::Shutdown::new(),
        data_dir: std::env::temp_dir(),
    };
    let settings = korvid_ingest::IngestSettings::default();
    let webhook = korvid_ingest::AuditWebhook::build(
        &settings,
        &ctx,
        Sanitizer::new(b"bench-key-0123456789"),
    )
    .expect("webhook");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/audit/webhook",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, webhook.router()).await });
    korvid_common::install_tls_provider();
    let client = reqwest::Client::new();
    let pre: Vec<(String, Vec<u8>)> = bodies
        .iter()
        .flat_map(|b| {
            parse_body(
                b.as_bytes(),
                "bench",
                &Sanitizer::new(b"bench-key-0123456789"),
            )
            .expect("parse")
            .events
        })
        .map(|e| {
            (
                korvid_ingest::audit::partition_key(&e),
                encode(&e, Framing::SingleObject).expect("encode"),
            )
        })
        .collect();
    let mut korvid = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (even, odd): (Vec<_>, Vec<_>) =
            bodies.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let post_all = |part: Vec<(usize, &String)>| {
            let client = client.clone();
            let url = url.clone();
            let part: Vec<String> = part.into_iter().map(|(_, b)| b.clone()).collect();
            async move {
                for b in part {
                    let r = client.post(&url).body(b).send().await.expect("post");
                    assert!(r.status().is_success(), "{}", r.status());
                }
            }
        };
        futures::future::join(post_all(even), post_all(odd)).await;
        korvid.push(t.elapsed().as_secs_f64());

        baseline.push(raw_produce(raw, topic, pre.iter()).await);
    }
    Row {
        stage: "ingest.webhook (HTTP intake to acks, ~1 KB events)",
        unit: "events",
        items: n,
        korvid: median(korvid),
        baseline: median(baseline),
    }
}

/// The baseline of both Kafka rows: a raw rdkafka producer sending pre-encoded records, all in
/// flight at once; seconds until every one is acknowledged.
async fn raw_produce<'a>(
    raw: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: impl Iterator<Item = &'a (String, Vec<u8>)>,
) -> f64 {
    use rdkafka::producer::FutureRecord;
    let t = Instant::now();
    let sends = records.map(|(k, v)| {
        raw.send(
            FutureRecord::to(topic).key(k).payload(v),
            Duration::from_secs(30),
        )
    });
    for r in futures::future::join_all(sends).await {
        r.expect("raw produce");
    }
    t.elapsed().as_secs_f64()
}

/// The middle value of a few timings.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
