//! Graph windows carry the inventory around what happened: objects imported into the objects
//! topic meet the audit activity that touches them, on the real broker.

mod support;

use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::ipc::reader::StreamReader;
use korvid_schemas::{Decoder, GraphWindow};
use support::*;

fn batch(ipc: &[u8]) -> RecordBatch {
    let mut reader = StreamReader::try_new(ipc, None).expect("ipc stream");
    reader.next().expect("one batch").expect("batch")
}

fn strings<'a>(b: &'a RecordBatch, col: &str) -> &'a StringArray {
    b.column_by_name(col)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .unwrap_or_else(|| panic!("string column {col}"))
}

fn flags<'a>(b: &'a RecordBatch, col: &str) -> &'a BooleanArray {
    b.column_by_name(col)
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .unwrap_or_else(|| panic!("flag column {col}"))
}

fn row(b: &RecordBatch, id_col: &str, id: &str) -> Option<usize> {
    let ids = strings(b, id_col);
    (0..b.num_rows()).find(|i| ids.value(*i) == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_carry_the_inventory_around_their_activity() {
    let s = stack().await;
    let cfg = &s.cfg;
    let manifests = s.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    std::fs::write(
        manifests.join("agent.yaml"),
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: agent, namespace: ops}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secret-reader, namespace: ops}
rules:
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: agent-reads-secrets, namespace: ops}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-reader}
subjects: [{kind: ServiceAccount, name: agent, namespace: ops}]
---
apiVersion: v1
kind: Pod
metadata: {name: agent-0, namespace: ops}
spec:
  serviceAccountName: agent
  hostPID: true
  containers:
  - name: agent
    image: registry.example.com/ops/agent:3.2
    securityContext: {privileged: true}
    volumeMounts: [{name: root, mountPath: /host}]
  volumes:
  - name: root
    hostPath: {path: /}
"#,
    )
    .expect("write");
    let import = korvid_import(cfg, &manifests);
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    wait_metric(
        cfg,
        "korvid_enrich_inventory_records",
        "",
        4.0,
        Duration::from_secs(20),
    )
    .await;

    let event_ms = now_ms();
    post_ok(
        &cfg.webhook_url(),
        exec_batch("gw-exec-1", "ops", "agent-0", "mallory", event_ms),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let window = loop {
        let found = read_topic(&cfg.bootstrap(), "korvid.graph.windows.v1")
            .iter()
            .filter_map(|b| Decoder::<GraphWindow>::new().decode(b).ok())
            .find(|w| w.partition_key == "e2e/ops");
        if let Some(w) = found {
            // A figure, not a check: event time to window readable from its topic.
            eprintln!(
                "window latency: {} ms (window {} ms, idle flush {} ms)",
                now_ms() - event_ms,
                2000,
                500
            );
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "no window for e2e/ops:\n{}",
            s.korvid.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let nodes = batch(&window.nodes);
    let pod = row(&nodes, "id", "Pod/ops/agent-0").expect("the exec'd pod");
    assert!(
        flags(&nodes, "in_inventory").value(pod),
        "the pod is known from the inventory"
    );
    assert!(flags(&nodes, "host_pid").value(pod));
    let container = row(&nodes, "id", "Container/ops/agent-0:agent").expect("its container");
    assert!(flags(&nodes, "privileged").value(container));
    let sa = row(&nodes, "id", "ServiceAccount/ops/agent").expect("its service account");
    assert!(flags(&nodes, "in_inventory").value(sa));

    let edges = batch(&window.edges);
    let (src, dst, ty) = (
        strings(&edges, "src"),
        strings(&edges, "dst"),
        strings(&edges, "type"),
    );
    let has = |s: &str, t: &str, d: &str| {
        (0..edges.num_rows())
            .find(|i| src.value(*i) == s && ty.value(*i) == t && dst.value(*i) == d)
    };
    assert!(
        has("User//mallory", "exec", "Pod/ops/agent-0").is_some(),
        "the activity"
    );
    assert!(has("Pod/ops/agent-0", "uses_sa", "ServiceAccount/ops/agent").is_some());
    let bound = has(
        "ServiceAccount/ops/agent",
        "bound_to",
        "Role/ops/secret-reader",
    )
    .expect("bound_to");
    assert_eq!(
        strings(&edges, "rbac_capabilities").value(bound),
        "get_secrets,list_secrets"
    );
    let mount = has(
        "Container/ops/agent-0:agent",
        "mounts",
        "Volume/ops/agent-0:root",
    )
    .expect("mount");
    assert!(!flags(&edges, "read_only").value(mount));
    assert!(has("Volume/ops/agent-0:root", "host_path", "HostPath///").is_some());
}
