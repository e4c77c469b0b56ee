//! Builds a graph window's Arrow tables from a closed window's events.
//!
//! Raw events become one Arrow batch; DataFusion SQL aggregates it into `activity` rows;
//! `nodes` and `edges` are the subjects and objects that activity touched, with typed
//! relations (`exec`, `get_secret`, `bind`, ...). Everything is encoded as Arrow IPC streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::ipc::writer::StreamWriter;
use korvid_common::sql::{PreparedQuery, SqlSession};
use korvid_schemas::{AuditEvent, GraphWindow, KubeEvent, WindowKind, window_tables};
use sha2::{Digest, Sha256};

use crate::inventory::{Attr, Attrs, Graph};
use crate::windows::ClosedWindow;

/// Why a window's tables could not be built (always a bug, never bad input).
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Arrow refused a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// DataFusion failed to plan or run the aggregation.
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The raw `events` table the aggregation reads.
fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("cluster", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("subject_groups", DataType::Utf8, true),
        Field::new("impersonated_user", DataType::Utf8, true),
        Field::new("verb", DataType::Utf8, false),
        Field::new("api_group", DataType::Utf8, true),
        Field::new("resource", DataType::Utf8, true),
        Field::new("subresource", DataType::Utf8, true),
        Field::new("namespace", DataType::Utf8, true),
        Field::new("target", DataType::Utf8, true),
        Field::new("response_code", DataType::Int32, true),
        Field::new("object_ref", DataType::Utf8, true),
        Field::new("source_ip", DataType::Utf8, true),
        Field::new("user_agent", DataType::Utf8, true),
        Field::new("request_uri", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("audit_id", DataType::Utf8, false),
    ]))
}

const ACTIVITY_SQL: &str = "
SELECT
  cluster, subject, max(subject_groups) AS subject_groups,
  max(impersonated_user) AS impersonated_user,
  verb, api_group, resource, subresource, namespace, target, response_code, object_ref,
  array_to_string(array_agg(DISTINCT source_ip ORDER BY source_ip), ',') AS source_ips,
  max(user_agent) AS user_agent,
  min(request_uri) AS sample_uri,
  count(*) AS count,
  min(event_time) AS first_time,
  max(event_time) AS last_time,
  array_to_string(array_slice(array_agg(audit_id ORDER BY event_time, audit_id), 1, 5), ',')
    AS sample_event_ids
FROM events
GROUP BY cluster, subject, verb, api_group, resource, subresource, namespace, target,
         response_code, object_ref
ORDER BY first_time, subject, verb, api_group, resource, subresource, namespace, target,
         response_code, object_ref";

/// Aggregates raw events into activity rows with a query planned once.
pub struct ActivityAggregator {
    session: SqlSession,
    query: PreparedQuery,
}

impl ActivityAggregator {
    /// Plans the aggregation.
    pub async fn new() -> Result<Self, TableError> {
        let session = SqlSession::new(&[("events", events_schema())])?;
        let query = session.prepare(ACTIVITY_SQL).await?;
        Ok(ActivityAggregator { session, query })
    }

    /// The `activity` table for a window's events.
    pub async fn activity(&self, events: &[AuditEvent]) -> Result<RecordBatch, TableError> {
        self.session.load("events", vec![events_batch(events)?])?;
        let out = self.session.run(&self.query).await?;
        conform(&window_tables::activity(), &out)
    }

    /// Builds the GraphWindow records of a closed window: one, or several when the inventory
    /// around it exceeds `max_nodes` entities (each part then carries the window's activity
    /// with its share of the inventory, so rules still join the two within a part).
    pub async fn graph_windows(
        &self,
        w: &ClosedWindow,
        inventory: Option<&Graph>,
        max_nodes: usize,
    ) -> Result<Vec<GraphWindow>, TableError> {
        let parts = match inventory {
            Some(g) if g.entities.len() > max_nodes => graph_parts(g, max_nodes),
            _ => return Ok(vec![self.graph_window(w, inventory).await?]),
        };
        let count = parts.len() as i32;
        let mut out = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let mut record = self.graph_window(w, Some(part)).await?;
            record.split_index = i as i32;
            record.split_count = count;
            record.window_id = window_id(
                &w.cluster,
                &w.key,
                w.start,
                w.end,
                WindowKind::Incremental,
                i as i32,
            );
            out.push(record);
        }
        Ok(out)
    }

    /// Builds the GraphWindow record for a closed window, with `inventory` (the part of the
    /// inventory around the window's entities) merged into its `nodes` and `edges`.
    pub async fn graph_window(
        &self,
        w: &ClosedWindow,
        inventory: Option<&Graph>,
    ) -> Result<GraphWindow, TableError> {
        // Most windows hold audit events only; copy them apart only when Events are mixed in.
        let split;
        let (kube, audit): (&[AuditEvent], &[AuditEvent]) =
            if w.events.iter().any(|e| e.level == KUBE_EVENT_LEVEL) {
                split = w
                    .events
                    .iter()
                    .cloned()
                    .partition::<Vec<AuditEvent>, _>(|e| e.level == KUBE_EVENT_LEVEL);
                (&split.0, &split.1)
            } else {
                (&[], &w.events)
            };
        let activity = self.activity(audit).await?;
        let (nodes, edges) = graph_tables(audit, &w.cluster, inventory, w.end)?;
        let kube_events = if kube.is_empty() {
            Vec::new()
        } else {
            ipc_bytes(&kube_events_table(kube)?)?
        };
        Ok(GraphWindow {
            cluster: w.cluster.clone(),
            event_time: w.end,
            window_id: window_id(
                &w.cluster,
                &w.key,
                w.start,
                w.end,
                WindowKind::Incremental,
                0,
            ),
            kind: WindowKind::Incremental,
            partition_key: w.key.clone(),
            window_start: w.start,
            window_end: w.end,
            split_index: 0,
            split_count: 1,
            event_count: w.events.len() as i64,
            nodes: ipc_bytes(&nodes)?,
            edges: ipc_bytes(&edges)?,
            activity: ipc_bytes(&activity)?,
            kube_events,
        })
    }
}

/// Windows of a cluster's whole inventory (`WindowKind::Full`), split into parts of at most
/// `max_nodes` entities: entities in id order (so namespaces stay together), each part with the
/// relations leaving its entities and the entities they reach.
pub fn full_windows(
    cluster: &str,
    graph: &Graph,
    since: i64,
    now: i64,
    max_nodes: usize,
) -> Result<Vec<GraphWindow>, TableError> {
    let parts = graph_parts(graph, max_nodes);
    let key = format!("{cluster}/_full");
    let count = parts.len() as i32;
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let (nodes, edges) = graph_tables(&[], cluster, Some(part), now)?;
        let activity = RecordBatch::new_empty(window_tables::activity());
        out.push(GraphWindow {
            cluster: cluster.to_string(),
            event_time: now,
            window_id: window_id(cluster, &key, since, now, WindowKind::Full, i as i32),
            kind: WindowKind::Full,
            partition_key: key.clone(),
            window_start: since,
            window_end: now,
            split_index: i as i32,
            split_count: count,
            event_count: 0,
            nodes: ipc_bytes(&nodes)?,
            edges: ipc_bytes(&edges)?,
            activity: ipc_bytes(&activity)?,
            kube_events: Vec::new(),
        });
    }
    Ok(out)
}

/// `graph` cut into parts of at most `max_nodes` entities (in id order, so namespaces stay
/// together); each part keeps the relations leaving its entities and the entities they reach.
/// An empty graph is one empty part.
pub fn graph_parts(graph: &Graph, max_nodes: usize) -> Vec<Graph> {
    let ids: Vec<&String> = graph.entities.keys().collect();
    if ids.len() <= max_nodes.max(1) {
        return vec![graph.clone()];
    }
    ids.chunks(max_nodes.max(1))
        .map(|chunk| {
            let mut part = Graph {
                focus: graph.focus.clone(),
                ..Graph::default()
            };
            for id in chunk {
                if let Some(e) = graph.entities.get(*id) {
                    part.entities.insert(e.id.clone(), e.clone());
                }
            }
            for (k, r) in &graph.relations {
                if part.entities.contains_key(&r.src) {
                    if let Some(dst) = graph.entities.get(&r.dst) {
                        part.entities
                            .entry(dst.id.clone())
                            .or_insert_with(|| dst.clone());
                    }
                    part.relations.insert(k.clone(), r.clone());
                }
            }
            part
        })
        .collect()
}

/// `level` marking a Kubernetes Event carried through the windows alongside audit events.
pub const KUBE_EVENT_LEVEL: &str = "KubeEvent";

/// A Kubernetes Event in the shape the windows hold (an AuditEvent that never leaves enrich):
/// keyed by its involved object's namespace, deduplicated by uid and count, and turned into a
/// `kube_events` row, not activity, when its window closes.
pub fn window_event(ev: &KubeEvent) -> AuditEvent {
    let mut annotations = std::collections::HashMap::new();
    annotations.insert("message".to_string(), ev.message.clone());
    annotations.insert("type".to_string(), ev.event_type.clone());
    annotations.insert("count".to_string(), ev.count.to_string());
    AuditEvent {
        cluster: ev.cluster.clone(),
        event_time: ev.event_time.saturating_mul(1000),
        audit_id: format!("kube-event:{}:{}", ev.uid, ev.count),
        stage: ev.event_type.clone(),
        level: KUBE_EVENT_LEVEL.into(),
        verb: ev.reason.clone(),
        request_uri: String::new(),
        user: ev.source_component.clone().unwrap_or_default(),
        groups: Vec::new(),
        impersonated_user: None,
        source_ips: Vec::new(),
        user_agent: None,
        api_group: None,
        api_version: None,
        resource: Some(ev.involved_kind.clone()),
        subresource: None,
        namespace: ev
            .involved_namespace
            .clone()
            .or_else(|| ev.namespace.clone()),
        name: Some(ev.involved_name.clone()),
        response_code: None,
        annotations,
        request_object: None,
    }
}

/// Kubernetes Events aggregated per (involved object, reason, type).
fn kube_events_table(events: &[AuditEvent]) -> Result<RecordBatch, ArrowError> {
    struct Row<'a> {
        source: &'a str,
        message: &'a str,
        /// Highest `count` seen per Event object (uid): Kubernetes folds repeats into one Event.
        counts: BTreeMap<&'a str, i64>,
        first: i64,
        last: i64,
    }
    type Key<'a> = (&'a str, Option<&'a str>, &'a str, &'a str, &'a str, &'a str);
    let mut rows: BTreeMap<Key<'_>, Row<'_>> = BTreeMap::new();
    for e in events {
        let t = e.event_time.div_euclid(1000);
        let key = (
            e.cluster.as_str(),
            e.namespace.as_deref(),
            e.resource.as_deref().unwrap_or(""),
            e.name.as_deref().unwrap_or(""),
            e.verb.as_str(),
            e.stage.as_str(),
        );
        let row = rows.entry(key).or_insert(Row {
            source: &e.user,
            message: "",
            counts: BTreeMap::new(),
            first: t,
            last: t,
        });
        // audit_id is `kube-event:<uid>:<count>`.
        let (uid, count) = e
            .audit_id
            .strip_prefix("kube-event:")
            .and_then(|rest| rest.rsplit_once(':'))
            .map_or((e.audit_id.as_str(), 1), |(uid, n)| {
                (uid, n.parse().unwrap_or(1))
            });
        let seen = row.counts.entry(uid).or_insert(0);
        *seen = (*seen).max(count);
        row.first = row.first.min(t);
        if t >= row.last {
            row.last = t;
            row.message = e.annotations.get("message").map_or("", String::as_str);
            row.source = &e.user;
        }
    }
    let r: Vec<(&Key<'_>, &Row<'_>)> = rows.iter().collect();
    let text = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let ts = |v: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
    };
    let involved: Vec<String> = r.iter().map(|(k, _)| node_id(k.2, k.1, k.3)).collect();
    RecordBatch::try_new(
        window_tables::kube_events(),
        vec![
            text(r.iter().map(|(k, _)| Some(k.0)).collect()),
            text(r.iter().map(|(k, _)| k.1).collect()),
            text(r.iter().map(|(k, _)| Some(k.2)).collect()),
            text(r.iter().map(|(k, _)| Some(k.3)).collect()),
            text(involved.iter().map(|s| Some(s.as_str())).collect()),
            text(r.iter().map(|(k, _)| Some(k.4)).collect()),
            text(r.iter().map(|(k, _)| Some(k.5)).collect()),
            text(r.iter().map(|(_, v)| Some(v.message)).collect()),
            text(
                r.iter()
                    .map(|(_, v)| (!v.source.is_empty()).then_some(v.source))
                    .collect(),
            ),
            Arc::new(Int64Array::from(
                r.iter()
                    .map(|(_, v)| v.counts.values().sum::<i64>())
                    .collect::<Vec<_>>(),
            )),
            ts(r.iter().map(|(_, v)| v.first).collect()),
            ts(r.iter().map(|(_, v)| v.last).collect()),
        ],
    )
}

/// Deterministic window id, so a replayed window yields the same findings.
pub fn window_id(
    cluster: &str,
    key: &str,
    start: i64,
    end: i64,
    kind: WindowKind,
    split: i32,
) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{cluster}\x1f{key}\x1f{start}\x1f{end}\x1f{kind:?}\x1f{split}"
    ));
    hex::encode(&h.finalize()[..16])
}

/// Concatenates result batches and casts them to the contract schema.
fn conform(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, TableError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let parts: Vec<ArrayRef> = batches
            .iter()
            .map(|b| cast(b.column(i), field.data_type()))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&dyn arrow::array::Array> = parts.iter().map(|a| a.as_ref()).collect();
        columns.push(if refs.is_empty() {
            arrow::array::new_empty_array(field.data_type())
        } else {
            arrow::compute::concat(&refs)?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// What a binding grants, from the request body: `ClusterRole/cluster-admin`.
fn object_ref(e: &AuditEvent) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(e.request_object.as_deref()?).ok()?;
    match e.resource.as_deref()? {
        "rolebindings" | "clusterrolebindings" => {
            let r = body.get("roleRef")?;
            Some(format!(
                "{}/{}",
                r.get("kind")?.as_str()?,
                r.get("name")?.as_str()?
            ))
        }
        _ => None,
    }
}

fn events_batch(events: &[AuditEvent]) -> Result<RecordBatch, ArrowError> {
    let s = |f: &dyn Fn(&AuditEvent) -> Option<String>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        s(&|e| Some(e.cluster.clone())),
        s(&|e| Some(e.user.clone())),
        s(&|e| (!e.groups.is_empty()).then(|| e.groups.join(","))),
        s(&|e| e.impersonated_user.clone()),
        s(&|e| Some(e.verb.clone())),
        s(&|e| e.api_group.clone()),
        s(&|e| e.resource.clone()),
        s(&|e| e.subresource.clone()),
        s(&|e| e.namespace.clone()),
        s(&|e| e.name.clone()),
        Arc::new(
            events
                .iter()
                .map(|e| e.response_code)
                .collect::<Int32Array>(),
        ),
        s(&object_ref),
        s(&|e| e.source_ips.first().cloned()),
        s(&|e| e.user_agent.clone()),
        s(&|e| Some(e.request_uri.clone())),
        Arc::new(
            TimestampMillisecondArray::from(
                events
                    .iter()
                    .map(|e| e.event_time.div_euclid(1000))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        s(&|e| Some(e.audit_id.clone())),
    ];
    RecordBatch::try_new(events_schema(), columns)
}

/// Kind of the object a resource names (`pods` -> `Pod`).
pub fn kind_of(resource: &str) -> String {
    let known = [
        ("pods", "Pod"),
        ("secrets", "Secret"),
        ("configmaps", "ConfigMap"),
        ("serviceaccounts", "ServiceAccount"),
        ("roles", "Role"),
        ("clusterroles", "ClusterRole"),
        ("rolebindings", "RoleBinding"),
        ("clusterrolebindings", "ClusterRoleBinding"),
        ("deployments", "Deployment"),
        ("daemonsets", "DaemonSet"),
        ("statefulsets", "StatefulSet"),
        ("replicasets", "ReplicaSet"),
        ("jobs", "Job"),
        ("cronjobs", "CronJob"),
        ("services", "Service"),
        ("ingresses", "Ingress"),
        ("networkpolicies", "NetworkPolicy"),
        ("nodes", "Node"),
        ("namespaces", "Namespace"),
        ("events", "Event"),
        ("persistentvolumes", "PersistentVolume"),
        ("persistentvolumeclaims", "PersistentVolumeClaim"),
        (
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
        ),
        (
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
        ),
    ];
    known
        .iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, k)| (*k).to_string())
        .unwrap_or_else(|| resource.to_string())
}

/// The relation an audited request creates between its subject and its object.
pub fn relation(e: &AuditEvent) -> String {
    let resource = e.resource.as_deref().unwrap_or("");
    let sub = e.subresource.as_deref().unwrap_or("");
    let verb = e.verb.as_str();
    match (resource, sub, verb) {
        ("pods", "exec" | "attach" | "portforward", _) => sub.to_string(),
        ("nodes", "proxy", _) | ("services", "proxy", _) | ("pods", "proxy", _) => "proxy".into(),
        ("serviceaccounts", "token", _) => "token_request".into(),
        ("secrets", _, "get") => "get_secret".into(),
        ("secrets", _, "list" | "watch") => "list_secrets".into(),
        (_, _, "impersonate") => "impersonate".into(),
        (_, _, "bind") => "bind".into(),
        (_, _, "escalate") => "escalate".into(),
        ("rolebindings" | "clusterrolebindings", _, "create" | "update" | "patch") => "bind".into(),
        (_, _, "get" | "list" | "watch") => "read".into(),
        (_, _, other) => other.to_string(),
    }
}

/// Subject node of an audited request (the contract's [`subject_node`], owned).
fn subject_node(e: &AuditEvent) -> (String, Option<String>, String) {
    let (kind, ns, name) = korvid_schemas::window_tables::subject_node(&e.user);
    (kind.into(), ns.map(Into::into), name.into())
}

/// Ids of the entities `events` touched (subjects and targets), to find them in the inventory.
pub fn touched_ids(events: &[AuditEvent]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for e in events {
        if e.level == KUBE_EVENT_LEVEL {
            // A Kubernetes Event touches the object it is about (its `resource` is the kind).
            if let (Some(kind), Some(name)) = (e.resource.as_deref(), e.name.as_deref()) {
                out.insert(node_id(kind, e.namespace.as_deref(), name));
            }
            continue;
        }
        let (kind, ns, name) = subject_node(e);
        out.insert(node_id(&kind, ns.as_deref(), &name));
        if let (Some(resource), Some(name)) = (e.resource.as_deref(), e.name.as_deref()) {
            out.insert(node_id(&kind_of(resource), e.namespace.as_deref(), name));
        }
    }
    out
}

fn node_id(kind: &str, ns: Option<&str>, name: &str) -> String {
    format!("{kind}/{}/{name}", ns.unwrap_or(""))
}

struct NodeRow {
    kind: String,
    namespace: Option<String>,
    name: String,
    cluster: String,
    service_account: bool,
    system: bool,
    first: i64,
    last: i64,
    in_inventory: bool,
    /// Touched by the window's activity, or a focus entity of its inventory part.
    in_focus: bool,
    attrs: Attrs,
}

struct EdgeRow {
    count: i64,
    first: i64,
    last: i64,
    in_inventory: bool,
    attrs: Attrs,
}

/// The `nodes` and `edges` tables: the entities a window's activity touched and the relations
/// it made, merged with `inventory` (the inventory around them), whose relations are stamped
/// with `window_end`.
pub fn graph_tables(
    events: &[AuditEvent],
    cluster: &str,
    inventory: Option<&Graph>,
    window_end: i64,
) -> Result<(RecordBatch, RecordBatch), ArrowError> {
    let mut nodes: BTreeMap<String, NodeRow> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String, String), EdgeRow> = BTreeMap::new();
    for e in events {
        let t = e.event_time.div_euclid(1000);
        let (kind, ns, name) = subject_node(e);
        let src = node_id(&kind, ns.as_deref(), &name);
        let system = e.user.starts_with("system:") && kind == "User";
        touch(
            &mut nodes,
            &src,
            NodeRow {
                service_account: kind == "ServiceAccount",
                system,
                kind,
                namespace: ns,
                name,
                cluster: e.cluster.clone(),
                first: t,
                last: t,
                in_inventory: false,
                in_focus: true,
                attrs: Attrs::new(),
            },
        );
        let Some(resource) = e.resource.as_deref() else {
            continue;
        };
        let target_kind = kind_of(resource);
        let target_name = e.name.clone().unwrap_or_else(|| "*".into());
        let dst = node_id(&target_kind, e.namespace.as_deref(), &target_name);
        touch(
            &mut nodes,
            &dst,
            NodeRow {
                kind: target_kind,
                namespace: e.namespace.clone(),
                name: target_name,
                cluster: e.cluster.clone(),
                service_account: false,
                system: false,
                first: t,
                last: t,
                in_inventory: false,
                in_focus: true,
                attrs: Attrs::new(),
            },
        );
        let edge = edges.entry((src, dst, relation(e))).or_insert(EdgeRow {
            count: 0,
            first: t,
            last: t,
            in_inventory: false,
            attrs: Attrs::new(),
        });
        edge.count += 1;
        edge.first = edge.first.min(t);
        edge.last = edge.last.max(t);
    }
    if let Some(g) = inventory {
        for ent in g.entities.values() {
            let row = nodes.entry(ent.id.clone()).or_insert_with(|| NodeRow {
                kind: ent.kind.clone(),
                namespace: ent.namespace.clone(),
                name: ent.name.clone(),
                cluster: cluster.to_string(),
                service_account: ent.kind == "ServiceAccount",
                system: ent.name.starts_with("system:"),
                first: window_end,
                last: window_end,
                in_inventory: true,
                in_focus: false,
                attrs: Attrs::new(),
            });
            row.in_inventory = true;
            row.in_focus |= g.focus.as_ref().is_none_or(|f| f.contains(&ent.id));
            row.attrs = ent.attrs.clone();
        }
        for r in g.relations.values() {
            edges
                .entry((r.src.clone(), r.dst.clone(), r.kind.to_string()))
                .or_insert_with(|| EdgeRow {
                    count: 0,
                    first: window_end,
                    last: window_end,
                    in_inventory: true,
                    attrs: r.attrs.clone(),
                });
        }
    }
    let ts = |v: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
    };
    let text = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let flag = |v: Vec<bool>| -> ArrayRef { Arc::new(BooleanArray::from(v)) };
    let n: Vec<(&String, &NodeRow)> = nodes.iter().collect();
    let mut columns = vec![
        text(n.iter().map(|(id, _)| Some(id.as_str())).collect()),
        text(n.iter().map(|(_, r)| Some(r.kind.as_str())).collect()),
        text(n.iter().map(|(_, r)| r.namespace.as_deref()).collect()),
        text(n.iter().map(|(_, r)| Some(r.name.as_str())).collect()),
        text(n.iter().map(|(_, r)| Some(r.cluster.as_str())).collect()),
        flag(n.iter().map(|(_, r)| r.service_account).collect()),
        flag(n.iter().map(|(_, r)| r.system).collect()),
        ts(n.iter().map(|(_, r)| r.first).collect()),
        ts(n.iter().map(|(_, r)| r.last).collect()),
        flag(n.iter().map(|(_, r)| r.in_focus).collect()),
        flag(n.iter().map(|(_, r)| r.in_inventory).collect()),
    ];
    let node_attrs: Vec<&Attrs> = n.iter().map(|(_, r)| &r.attrs).collect();
    columns.extend(attribute_columns(
        &node_attrs,
        window_tables::NODE_FLAGS,
        window_tables::NODE_TEXTS,
        window_tables::NODE_NUMBERS,
    ));
    let nodes_batch = RecordBatch::try_new(window_tables::nodes(), columns)?;
    let e: Vec<(&(String, String, String), &EdgeRow)> = edges.iter().collect();
    let mut columns = vec![
        text(e.iter().map(|(k, _)| Some(k.0.as_str())).collect()),
        text(e.iter().map(|(k, _)| Some(k.1.as_str())).collect()),
        text(e.iter().map(|(k, _)| Some(k.2.as_str())).collect()),
        Arc::new(Int64Array::from(
            e.iter().map(|(_, r)| r.count).collect::<Vec<_>>(),
        )) as ArrayRef,
        ts(e.iter().map(|(_, r)| r.first).collect()),
        ts(e.iter().map(|(_, r)| r.last).collect()),
        flag(e.iter().map(|(_, r)| r.in_inventory).collect()),
    ];
    let edge_attrs: Vec<&Attrs> = e.iter().map(|(_, r)| &r.attrs).collect();
    columns.extend(attribute_columns(
        &edge_attrs,
        window_tables::EDGE_FLAGS,
        window_tables::EDGE_TEXTS,
        window_tables::EDGE_NUMBERS,
    ));
    let edges_batch = RecordBatch::try_new(window_tables::edges(), columns)?;
    Ok((nodes_batch, edges_batch))
}

/// One column per named attribute, null where a row lacks it (or has another type).
fn attribute_columns(
    rows: &[&Attrs],
    flags: &[&str],
    texts: &[&str],
    numbers: &[&str],
) -> Vec<ArrayRef> {
    let mut out: Vec<ArrayRef> = Vec::new();
    for name in flags {
        out.push(Arc::new(
            rows.iter()
                .map(|a| a.get(name).and_then(Attr::as_bool))
                .collect::<BooleanArray>(),
        ));
    }
    for name in texts {
        out.push(Arc::new(
            rows.iter()
                .map(|a| a.get(name).and_then(Attr::as_text))
                .collect::<StringArray>(),
        ));
    }
    for name in numbers {
        out.push(Arc::new(
            rows.iter()
                .map(|a| match a.get(name) {
                    Some(Attr::Int(i)) => Some(*i),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ));
    }
    out
}

fn touch(nodes: &mut BTreeMap<String, NodeRow>, id: &str, row: NodeRow) {
    match nodes.get_mut(id) {
        Some(existing) => {
            existing.first = existing.first.min(row.first);
            existing.last = existing.last.max(row.last);
        }
        None => {
            nodes.insert(id.to_string(), row);
        }
    }
}

/// Encodes a batch as an Arrow IPC stream.
pub fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        id: &str,
        user: &str,
        verb: &str,
        res: &str,
        sub: Option<&str>,
        name: &str,
        ms: i64,
    ) -> AuditEvent {
        AuditEvent {
            cluster: "c".into(),
            event_time: ms * 1000,
            audit_id: id.into(),
            stage: "ResponseComplete".into(),
            level: "Metadata".into(),
            verb: verb.into(),
            request_uri: format!("/api/v1/namespaces/ns/{res}/{name}"),
            user: user.into(),
            groups: vec!["system:authenticated".into()],
            impersonated_user: None,
            source_ips: vec!["10.0.0.9".into()],
            user_agent: Some("kubectl".into()),
            api_group: None,
            api_version: Some("v1".into()),
            resource: Some(res.into()),
            subresource: sub.map(Into::into),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            response_code: Some(200),
            annotations: Default::default(),
            request_object: None,
        }
    }

    #[tokio::test]
    async fn activity_aggregates_and_graph_links() {
        let agg = ActivityAggregator::new().await.expect("plan");
        let mut events = vec![
            ev("1", "alice", "create", "pods", Some("exec"), "web", 1000),
            ev("2", "alice", "create", "pods", Some("exec"), "web", 1500),
            ev(
                "3",
                "system:serviceaccount:ci:runner",
                "get",
                "secrets",
                None,
                "db",
                1200,
            ),
        ];
        let mut binding = ev(
            "4",
            "mallory",
            "create",
            "clusterrolebindings",
            None,
            "pwn",
            1300,
        );
        binding.namespace = None;
        binding.request_object = Some(
            r#"{"kind":"ClusterRoleBinding","roleRef":{"kind":"ClusterRole","name":"cluster-admin"}}"#.into(),
        );
        events.push(binding);
        let a = agg.activity(&events).await.expect("activity");
        assert_eq!(a.schema(), window_tables::activity());
        assert_eq!(a.num_rows(), 3);
        let count = a.column_by_name("count").expect("count");
        let count = count.as_any().downcast_ref::<Int64Array>().expect("i64");
        assert_eq!(count.value(0), 2, "two execs folded into one row");
        let ids = a.column_by_name("sample_event_ids").expect("ids");
        let ids = ids.as_any().downcast_ref::<StringArray>().expect("str");
        assert_eq!(ids.value(0), "1,2");
        let refs = a.column_by_name("object_ref").expect("ref");
        let refs = refs.as_any().downcast_ref::<StringArray>().expect("str");
        assert!(refs.iter().any(|r| r == Some("ClusterRole/cluster-admin")));

        let (nodes, edges) = graph_tables(&events, "c", None, 0).expect("graph");
        assert_eq!(nodes.schema(), window_tables::nodes());
        let kinds = nodes
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("str");
        assert!(kinds.iter().any(|k| k == Some("ServiceAccount")));
        let types = edges
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("str");
        let types: Vec<_> = types.iter().flatten().collect();
        assert!(
            types.contains(&"exec") && types.contains(&"get_secret") && types.contains(&"bind")
        );
    }

    #[test]
    fn window_ids_are_deterministic_and_distinct() {
        let a = window_id("c", "c/ns", 0, 2000, WindowKind::Incremental, 0);
        assert_eq!(
            a,
            window_id("c", "c/ns", 0, 2000, WindowKind::Incremental, 0)
        );
        assert_ne!(
            a,
            window_id("c", "c/ns", 2000, 4000, WindowKind::Incremental, 0)
        );
        assert_ne!(
            a,
            window_id("c", "c/other", 0, 2000, WindowKind::Incremental, 0)
        );
    }
}
