//! Golden windows: fixed objects and audit events must always produce the same graph window,
//! byte for byte. The expected tables are kept as text in `tests/golden/window.txt` (with the
//! sha256 of each IPC stream); after an intended change, regenerate with
//! `KORVID_BLESS=1 cargo test -p korvid-enrich --test golden` and review the diff.

use std::collections::{BTreeSet, HashMap};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::util::display::array_value_to_string;
use korvid_enrich::inventory::Inventory;
use korvid_enrich::tables::{ActivityAggregator, touched_ids};
use korvid_enrich::windows::ClosedWindow;
use korvid_schemas::{AuditEvent, GraphWindow, ObjectChange, ObjectOp};
use sha2::{Digest, Sha256};

/// The reviewed window, found from the directory the test runs for (read at run time: a
/// binary built from another checkout sharing the target directory must not look there).
fn golden() -> std::path::PathBuf {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    std::path::Path::new(&dir).join("tests/golden/window.txt")
}

fn object(
    kind: &str,
    api_version: &str,
    ns: Option<&str>,
    name: &str,
    body: serde_json::Value,
) -> ObjectChange {
    let mut obj = body;
    obj["apiVersion"] = api_version.into();
    obj["kind"] = kind.into();
    obj["metadata"]["name"] = name.into();
    if let Some(ns) = ns {
        obj["metadata"]["namespace"] = ns.into();
    }
    ObjectChange {
        cluster: "golden".into(),
        event_time: 1_795_741_200_000,
        op: ObjectOp::Snapshot,
        uid: format!("uid-{kind}-{name}"),
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: ns.map(str::to_string),
        name: name.into(),
        resource_version: Some("1".into()),
        labels: HashMap::new(),
        object_json: Some(obj.to_string()),
    }
}

fn event(
    id: &str,
    user: &str,
    verb: &str,
    resource: &str,
    sub: Option<&str>,
    name: &str,
    ms: i64,
) -> AuditEvent {
    AuditEvent {
        cluster: "golden".into(),
        event_time: ms * 1000,
        audit_id: id.into(),
        stage: "ResponseComplete".into(),
        level: "Metadata".into(),
        verb: verb.into(),
        request_uri: format!("/api/v1/namespaces/shop/{resource}/{name}"),
        user: user.into(),
        groups: vec!["system:authenticated".into()],
        impersonated_user: None,
        source_ips: vec!["203.0.113.7".into(), "10.0.0.4".into()],
        user_agent: Some("kubectl/v1.31.0".into()),
        api_group: None,
        api_version: Some("v1".into()),
        resource: Some(resource.into()),
        subresource: sub.map(str::to_string),
        namespace: Some("shop".into()),
        name: Some(name.into()),
        response_code: Some(200),
        annotations: HashMap::new(),
        request_object: None,
    }
}

/// The shop namespace's window from 01:00:00 to 01:00:02.
fn closed(events: Vec<AuditEvent>) -> ClosedWindow {
    ClosedWindow {
        key: "golden/shop".into(),
        cluster: "golden".into(),
        start: 1_795_741_200_000,
        end: 1_795_741_202_000,
        events,
        offsets: Vec::new(),
        traces: Vec::new(),
        early: false,
    }
}

async fn build() -> GraphWindow {
    use serde_json::json;
    let mut inv = Inventory::default();
    for o in [
        object("Node", "v1", None, "node-a", json!({"metadata": {}})),
        object(
            "ServiceAccount",
            "v1",
            Some("shop"),
            "web",
            json!({"metadata": {}}),
        ),
        object(
            "Role",
            "rbac.authorization.k8s.io/v1",
            Some("shop"),
            "reader",
            json!({"metadata": {},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}),
        ),
        object(
            "RoleBinding",
            "rbac.authorization.k8s.io/v1",
            Some("shop"),
            "web-reads",
            json!({"metadata": {},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]}),
        ),
        object(
            "Pod",
            "v1",
            Some("shop"),
            "web-1",
            json!({"metadata": {},
            "spec": {"nodeName": "node-a", "serviceAccountName": "web", "containers": [{"name": "web",
              "image": "nginx:1.25", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
              "volumeMounts": [{"name": "logs", "mountPath": "/var/log/host", "readOnly": true}]}],
              "volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}]}}),
        ),
    ] {
        inv.apply(&o);
    }
    let events = vec![
        event(
            "g-1",
            "mallory",
            "create",
            "pods",
            Some("exec"),
            "web-1",
            1_795_741_200_100,
        ),
        event(
            "g-2",
            "system:serviceaccount:shop:web",
            "get",
            "secrets",
            None,
            "db",
            1_795_741_200_300,
        ),
        event(
            "g-3",
            "system:serviceaccount:shop:web",
            "get",
            "secrets",
            None,
            "db",
            1_795_741_200_900,
        ),
        event(
            "g-4",
            "mallory",
            "create",
            "pods",
            Some("exec"),
            "web-1",
            1_795_741_201_500,
        ),
    ];
    let mut events = events;
    events.push(korvid_enrich::tables::window_event(
        &korvid_schemas::KubeEvent {
            cluster: "golden".into(),
            event_time: 1_795_741_201_000,
            uid: "ev-1".into(),
            namespace: Some("shop".into()),
            event_type: "Warning".into(),
            reason: "BackOff".into(),
            message: "Back-off restarting failed container web".into(),
            involved_kind: "Pod".into(),
            involved_namespace: Some("shop".into()),
            involved_name: "web-1".into(),
            involved_uid: None,
            source_component: Some("kubelet".into()),
            count: 3,
        },
    ));
    let graph = inv.graph();
    let seeds: BTreeSet<String> = touched_ids(&events);
    let around = graph.neighbourhood(&seeds, 2);
    let window = closed(events);
    let agg = ActivityAggregator::new().await.expect("aggregator");
    agg.graph_window(&window, Some(&around))
        .await
        .expect("window")
}

fn render(name: &str, ipc: &[u8]) -> String {
    let mut out = format!("## {name} sha256={}\n", hex::encode(Sha256::digest(ipc)));
    let reader = StreamReader::try_new(ipc, None).expect("ipc");
    for batch in reader {
        let batch: RecordBatch = batch.expect("batch");
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = (0..batch.num_columns())
                .filter_map(|c| {
                    let v = array_value_to_string(batch.column(c), row).unwrap_or_default();
                    (!v.is_empty()).then(|| format!("{}={v}", schema.field(c).name()))
                })
                .collect();
            out.push_str(&cells.join(" | "));
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_inputs_give_byte_stable_windows() {
    let a = build().await;
    let b = build().await;
    assert_eq!(a, b, "two builds of the same window differ");
    let text = format!(
        "# window {} {}..{} ({} events)\n{}{}{}",
        a.window_id,
        a.window_start,
        a.window_end,
        a.event_count,
        render("nodes", &a.nodes),
        render("edges", &a.edges),
        render("activity", &a.activity),
    ) + &render("kube_events", &a.kube_events);
    if std::env::var_os("KORVID_BLESS").is_some() {
        std::fs::write(golden(), &text).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(golden())
        .expect("tests/golden/window.txt (KORVID_BLESS=1 writes it)");
    assert!(
        text == expected,
        "the window changed; if intended, rerun with KORVID_BLESS=1 and review.\n--- got\n{text}\n--- expected\n{expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_windows_cover_the_inventory_in_parts() {
    use serde_json::json;
    let mut inv = Inventory::default();
    for i in 0..12 {
        inv.apply(&object(
            "ServiceAccount",
            "v1",
            Some("shop"),
            &format!("sa-{i:02}"),
            json!({"metadata": {}}),
        ));
    }
    let graph = inv.graph();
    let windows =
        korvid_enrich::tables::full_windows("golden", &graph, 0, 600_000, 5).expect("full");
    assert_eq!(windows.len(), 3);
    let mut seen = BTreeSet::new();
    for (i, w) in windows.iter().enumerate() {
        assert_eq!((w.split_index, w.split_count), (i as i32, 3));
        assert_eq!(w.kind, korvid_schemas::WindowKind::Full);
        assert_eq!(w.partition_key, "golden/_full");
        let reader = StreamReader::try_new(w.nodes.as_slice(), None).expect("ipc");
        for batch in reader {
            let batch = batch.expect("batch");
            assert!(batch.num_rows() <= 5);
            let ids = batch.column(0);
            for r in 0..batch.num_rows() {
                seen.insert(array_value_to_string(ids, r).unwrap_or_default());
            }
        }
    }
    assert_eq!(seen.len(), 12, "every entity in some part");
    let ids: BTreeSet<&str> = windows.iter().map(|w| w.window_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "parts have distinct ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_windows_use_the_same_code() {
    use serde_json::json;
    let objects = vec![
        object(
            "ServiceAccount",
            "v1",
            Some("shop"),
            "web",
            json!({"metadata": {}}),
        ),
        object(
            "Pod",
            "v1",
            Some("shop"),
            "web-1",
            json!({"metadata": {},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]}}),
        ),
    ];
    let events = vec![
        event(
            "o-2",
            "mallory",
            "create",
            "pods",
            Some("exec"),
            "web-1",
            1_795_741_203_000,
        ),
        event(
            "o-1",
            "mallory",
            "create",
            "pods",
            Some("exec"),
            "web-1",
            1_795_741_200_100,
        ),
        event(
            "o-1",
            "mallory",
            "create",
            "pods",
            Some("exec"),
            "web-1",
            1_795_741_200_100,
        ),
    ];
    let out = korvid_enrich::offline::windows(&objects, Vec::new(), events, 2_000, 20_000)
        .await
        .expect("offline");
    assert_eq!(out.duplicates, 1);
    let kinds: Vec<_> = out
        .windows
        .iter()
        .map(|w| (w.partition_key.as_str(), w.kind, w.event_count))
        .collect();
    assert_eq!(
        kinds,
        [
            ("golden/shop", korvid_schemas::WindowKind::Incremental, 1),
            ("golden/shop", korvid_schemas::WindowKind::Incremental, 1),
            ("golden/_full", korvid_schemas::WindowKind::Full, 0),
        ]
    );
    let text = render("nodes", &out.windows[0].nodes);
    assert!(
        text.contains("id=Pod/shop/web-1") && text.contains("in_inventory=true"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_windows_split_and_every_part_keeps_the_activity() {
    use serde_json::json;
    let mut inv = Inventory::default();
    let mut events = Vec::new();
    for i in 0..12 {
        let name = format!("sa-{i:02}");
        inv.apply(&object(
            "ServiceAccount",
            "v1",
            Some("shop"),
            &name,
            json!({"metadata": {}}),
        ));
        events.push(event(
            &format!("s-{i}"),
            &format!("system:serviceaccount:shop:{name}"),
            "list",
            "secrets",
            None,
            "x",
            1_795_741_200_100 + i,
        ));
    }
    let around = inv.graph().neighbourhood(&touched_ids(&events), 2);
    let window = closed(events);
    let agg = ActivityAggregator::new().await.expect("aggregator");
    let parts = agg
        .graph_windows(&window, Some(&around), 5)
        .await
        .expect("windows");
    assert_eq!(parts.len(), 3);
    let ids: BTreeSet<&str> = parts.iter().map(|w| w.window_id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!((p.split_index, p.split_count), (i as i32, 3));
        assert_eq!(
            p.activity, parts[0].activity,
            "each part carries the activity"
        );
    }
    let single = agg
        .graph_windows(&window, Some(&around), 20_000)
        .await
        .expect("one");
    assert_eq!(single.len(), 1);
}
