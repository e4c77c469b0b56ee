//! Rules over object state report what a window is about: in an incremental window only the
//! subjects its activity touched (or that changed), in a full window every subject. Built with
//! the pipeline's own inventory, window and rule code.

use std::collections::HashMap;

use korvid_detect::{RuleCatalog, RuleEngine};
use korvid_enrich::inventory::Inventory;
use korvid_enrich::tables::{ActivityAggregator, full_windows, touched_ids};
use korvid_enrich::windows::ClosedWindow;
use korvid_schemas::{AuditEvent, GraphWindow, ObjectChange, ObjectOp};

const T0: i64 = 1_795_741_200_000;

fn host_network_pod(name: &str) -> ObjectChange {
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "nginx:1.25"}]}});
    ObjectChange {
        cluster: "focus".into(),
        event_time: T0,
        op: ObjectOp::Snapshot,
        uid: format!("uid-{name}"),
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: Some("shop".into()),
        name: name.into(),
        resource_version: Some("1".into()),
        labels: HashMap::new(),
        object_json: Some(body.to_string()),
    }
}

fn get_pod(name: &str) -> AuditEvent {
    AuditEvent {
        cluster: "focus".into(),
        event_time: (T0 + 100) * 1000,
        audit_id: format!("get-{name}"),
        stage: "ResponseComplete".into(),
        level: "Metadata".into(),
        verb: "get".into(),
        request_uri: format!("/api/v1/namespaces/shop/pods/{name}"),
        user: "alice".into(),
        groups: vec!["system:authenticated".into()],
        impersonated_user: None,
        source_ips: vec!["10.0.0.9".into()],
        user_agent: Some("kubectl/v1.31.0".into()),
        api_group: None,
        api_version: Some("v1".into()),
        resource: Some("pods".into()),
        subresource: None,
        namespace: Some("shop".into()),
        name: Some(name.into()),
        response_code: Some(200),
        annotations: HashMap::new(),
        request_object: None,
    }
}

async fn host_network_subjects(engine: &RuleEngine, window: &GraphWindow) -> Vec<String> {
    let eval = engine.evaluate(window, T0).await.expect("evaluate");
    let mut out: Vec<String> = eval
        .findings
        .iter()
        .filter(|f| f.rule_id.as_deref() == Some("KOR-0104"))
        .map(|f| f.subject.name.clone())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_findings_cover_the_window_focus_and_full_windows_cover_everything() {
    let mut inventory = Inventory::default();
    for name in ["api", "worker"] {
        inventory.apply(&host_network_pod(name));
    }
    let graph = inventory.graph();
    let events = vec![get_pod("api")];
    // The worker pod is within two relations of the api pod (through their namespace), so it
    // is in the window as context.
    let around = graph.neighbourhood(&touched_ids(&events), 2);
    assert!(
        around.entities.contains_key("Pod/shop/worker"),
        "{:?}",
        around.entities.keys()
    );
    let closed = ClosedWindow {
        key: "focus/shop".into(),
        cluster: "focus".into(),
        start: T0,
        end: T0 + 2000,
        events,
        offsets: vec![],
        traces: Vec::new(),
        early: false,
    };
    let incremental = ActivityAggregator::new()
        .await
        .expect("aggregator")
        .graph_window(&closed, Some(&around))
        .await
        .expect("window");
    let engine = RuleEngine::new(RuleCatalog::load(true, &[], &[]))
        .await
        .expect("engine");
    assert_eq!(host_network_subjects(&engine, &incremental).await, ["api"]);

    let full = full_windows("focus", &graph, T0, T0 + 2000, 20_000).expect("full windows");
    let mut everything = Vec::new();
    for w in &full {
        everything.extend(host_network_subjects(&engine, w).await);
    }
    assert_eq!(everything, ["api", "worker"]);
}
