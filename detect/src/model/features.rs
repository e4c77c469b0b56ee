//! A graph window as the model sees it: one feature row per entity, typed edges between them.
//!
//! This is the only feature code there is: `korvid model featurize` writes its output to the
//! training tables and detect feeds the same output to the model online, so training and
//! serving cannot drift. Changing a list here changes the model's input: bump
//! [`FEATURE_VERSION`] and retrain (the model records the version it was trained on and detect
//! refuses a model of another version).

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use korvid_schemas::window_tables::{NODE_FLAGS, NODE_NUMBERS, subject_node_id};
use korvid_schemas::{Finding, Severity, Tactic};

use crate::engine::WindowTables;

/// Version of the feature layout below.
pub const FEATURE_VERSION: u32 = 1;

/// Entity kinds with a one-hot feature each; anything else sets `kind_other`.
pub const KINDS: &[&str] = &[
    "Pod",
    "ServiceAccount",
    "User",
    "Group",
    "Secret",
    "ConfigMap",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "Node",
    "Service",
    "Namespace",
    "Deployment",
    "DaemonSet",
    "StatefulSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "Image",
    "Ingress",
    "NetworkPolicy",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Edge types, inventory relations then activity relations; the index is the model's relation
/// id and anything else is [`RELATIONS`]`.len()` ("other").
pub const RELATIONS: &[&str] = &[
    "binds",
    "bound_to",
    "claims",
    "contains",
    "env_from",
    "exposes",
    "has_volume",
    "identity",
    "member_of",
    "mounts",
    "owns",
    "role_ref",
    "routes",
    "runs_image",
    "runs_on",
    "selects",
    "shares_pid_namespace",
    "uses_sa",
    "exec",
    "attach",
    "portforward",
    "proxy",
    "token_request",
    "get_secret",
    "list_secrets",
    "impersonate",
    "bind",
    "escalate",
    "read",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Number of relation ids the model knows (the listed ones plus "other").
pub fn relation_count() -> usize {
    RELATIONS.len() + 1
}

/// Capabilities granted through RBAC (enrich's `rbac_capabilities` names), one feature each.
const RBAC_CAPABILITIES: &[&str] = &[
    "exec_pods",
    "attach_pods",
    "port_forward",
    "create_pods",
    "patch_pods",
    "create_workloads",
    "get_secrets",
    "list_secrets",
    "bind_roles",
    "escalate_roles",
    "create_bindings",
    "impersonate",
    "nodes_proxy",
    "create_tokens",
    "certificate_signing",
    "modify_webhooks",
    "delete_events",
    "cluster_admin",
];

/// Per-subject request counts from `activity`, log-scaled.
const ACTIVITY: &[&str] = &[
    "requests",
    "distinct_requests",
    "denied",
    "reads",
    "writes",
    "deletes",
    "secret_reads",
    "exec_like",
    "rbac_writes",
    "access_reviews",
    "impersonated",
    "namespaces_touched",
];

/// Edge-derived counts, log-scaled: requests made and received along activity edges (their
/// `count`), writes received, and inventory relations each way.
const DEGREES: &[&str] = &[
    "activity_out",
    "activity_in",
    "writes_in",
    "inventory_out",
    "inventory_in",
];

/// Names of the features, in column order.
pub fn feature_names() -> Vec<String> {
    let mut out: Vec<String> = KINDS.iter().map(|k| format!("kind_{k}")).collect();
    out.push("kind_other".into());
    out.extend(BOOLS.iter().map(|n| (*n).to_string()));
    out.extend(NODE_FLAGS.iter().map(|f| format!("flag_{f}")));
    out.extend(NODE_NUMBERS.iter().map(|n| format!("log_{n}")));
    out.extend(MISC.iter().map(|n| (*n).to_string()));
    out.extend(RBAC_CAPABILITIES.iter().map(|c| format!("rbac_{c}")));
    out.extend(ACTIVITY.iter().map(|a| format!("log_{a}")));
    out.extend(DEGREES.iter().map(|d| format!("log_{d}")));
    out.extend(Tactic::ALL.iter().map(|t| format!("rule_{}", t.as_str())));
    out.push("log_rule_hits".into());
    out
}

/// Width of a feature row.
pub fn feature_count() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| feature_names().len())
}

/// One window, ready for the model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowGraph {
    /// Entity ids (`kind/namespace/name`), row order of `features`.
    pub node_ids: Vec<String>,
    /// Row-major `node_ids.len() x feature_count()` matrix.
    pub features: Vec<f32>,
    /// Edge sources (row indices).
    pub edge_src: Vec<i64>,
    /// Edge destinations (row indices).
    pub edge_dst: Vec<i64>,
    /// Relation ids (index into [`RELATIONS`]; `RELATIONS.len()` = other).
    pub edge_type: Vec<i64>,
}

impl WindowGraph {
    /// Number of entities.
    pub fn node_count(&self) -> usize {
        self.node_ids.len()
    }

    /// One entity's feature row.
    pub fn row(&self, node: usize) -> &[f32] {
        let f = feature_count();
        &self.features[node * f..(node + 1) * f]
    }

    /// Name of an edge's relation.
    pub fn relation_name(&self, edge: usize) -> &'static str {
        RELATIONS
            .get(self.edge_type[edge] as usize)
            .copied()
            .unwrap_or("other")
    }
}

/// Severity as a number in (0, 1], for the rule-hit features.
pub fn severity_weight(s: Severity) -> f32 {
    match s {
        Severity::Low => 0.25,
        Severity::Medium => 0.5,
        Severity::High => 0.75,
        Severity::Critical => 1.0,
    }
}

/// The id of the entity a finding is about, as `nodes.id` spells it.
pub fn subject_id(f: &Finding) -> String {
    format!(
        "{}/{}/{}",
        f.subject.kind,
        f.subject.namespace.as_deref().unwrap_or(""),
        f.subject.name
    )
}

/// Builds a window's graph and features from the tables the rules ran on
/// ([`crate::engine::Evaluation::tables`]) and the rule findings of this window.
pub fn window_graph(tables: &WindowTables, findings: &[Finding]) -> WindowGraph {
    build(&tables.nodes, &tables.edges, &tables.activity, findings)
}

fn log1p(x: f64) -> f32 {
    (x.max(0.0)).ln_1p() as f32
}

/// Where each group of features starts in a row (see [`feature_names`] for the order).
struct Layout {
    kinds: usize,
    bools: usize,
    numbers: usize,
    misc: usize,
    rbac: usize,
    activity: usize,
    degrees: usize,
    rules: usize,
    hits: usize,
    width: usize,
}

const BOOLS: [&str; 4] = [
    "is_service_account",
    "is_system",
    "in_focus",
    "in_inventory",
];
const MISC: [&str; 5] = [
    "has_linux_capabilities",
    "has_host_path",
    "exposed_service",
    "has_image",
    "anonymous",
];

fn layout() -> &'static Layout {
    static L: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    L.get_or_init(|| {
        let kinds = 0;
        let bools = kinds + KINDS.len() + 1;
        let flags = bools + BOOLS.len();
        let numbers = flags + NODE_FLAGS.len();
        let misc = numbers + NODE_NUMBERS.len();
        let rbac = misc + MISC.len();
        let activity = rbac + RBAC_CAPABILITIES.len();
        let degrees = activity + ACTIVITY.len();
        let rules = degrees + DEGREES.len();
        let hits = rules + Tactic::ALL.len();
        let l = Layout {
            kinds,
            bools,
            numbers,
            misc,
            rbac,
            activity,
            degrees,
            rules,
            hits,
            width: hits + 1,
        };
        assert_eq!(l.width, feature_count(), "layout and names agree");
        l
    })
}

/// A text cell, empty when null or absent.
fn cell(a: Option<&arrow::array::StringArray>, row: usize) -> &str {
    a.filter(|a| a.is_valid(row)).map_or("", |a| a.value(row))
}

fn bit(b: bool) -> f32 {
    f32::from(u8::from(b))
}

fn build(
    nodes: &[RecordBatch],
    edges: &[RecordBatch],
    activity: &[RecordBatch],
    findings: &[Finding],
) -> WindowGraph {
    let l = layout();
    let mut g = WindowGraph::default();
    let mut index: HashMap<String, usize> = HashMap::new();

    for b in nodes {
        let text = |name: &str| b.column_by_name(name).map(|c| c.as_string::<i32>());
        let flags: Vec<_> = BOOLS
            .iter()
            .chain(NODE_FLAGS)
            .map(|n| b.column_by_name(n).map(|c| c.as_boolean()))
            .collect();
        let numbers: Vec<_> = NODE_NUMBERS
            .iter()
            .map(|n| b.column_by_name(n).map(|c| c.as_primitive::<Int64Type>()))
            .collect();
        let (Some(ids), Some(kinds)) = (text("id"), text("kind")) else {
            continue;
        };
        let misc_texts = [
            text("linux_capabilities"),
            text("host_path"),
            text("service_type"),
            text("image"),
        ];
        let caps = text("rbac_capabilities");
        for row in 0..b.num_rows() {
            let id = ids.value(row);
            if index.contains_key(id) {
                continue;
            }
            let mut x = vec![0f32; l.width];
            let kind = kinds.value(row);
            x[l.kinds + KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())] = 1.0;
            for (j, a) in flags.iter().enumerate() {
                x[l.bools + j] = bit(a.is_some_and(|a| a.is_valid(row) && a.value(row)));
            }
            for (j, a) in numbers.iter().enumerate() {
                let v = a.filter(|a| a.is_valid(row)).map_or(0, |a| a.value(row));
                x[l.numbers + j] = log1p(v as f64);
            }
            let value = |a| cell(a, row);
            x[l.misc] = bit(!value(misc_texts[0]).is_empty());
            x[l.misc + 1] = bit(!value(misc_texts[1]).is_empty());
            x[l.misc + 2] = bit(matches!(value(misc_texts[2]), "LoadBalancer" | "NodePort"));
            x[l.misc + 3] = bit(!value(misc_texts[3]).is_empty());
            x[l.misc + 4] =
                bit(id.ends_with("/system:anonymous") || id.ends_with("/system:unauthenticated"));
            for c in value(caps).split(',').map(str::trim) {
                if let Some(j) = RBAC_CAPABILITIES.iter().position(|k| *k == c) {
                    x[l.rbac + j] = 1.0;
                }
            }
            index.insert(id.to_string(), g.node_ids.len());
            g.node_ids.push(id.to_string());
            g.features.extend(x);
        }
    }

    // activity_out, activity_in, writes_in, inventory_out, inventory_in
    let mut degree = vec![[0f64; 5]; g.node_ids.len()];
    for b in edges {
        let text = |name: &str| b.column_by_name(name).map(|c| c.as_string::<i32>());
        let (Some(src), Some(dst), Some(kind)) = (text("src"), text("dst"), text("type")) else {
            continue;
        };
        let inventory = b.column_by_name("in_inventory").map(|c| c.as_boolean());
        let count = b
            .column_by_name("count")
            .map(|c| c.as_primitive::<Int64Type>());
        for row in 0..b.num_rows() {
            let (Some(&s), Some(&d)) = (index.get(src.value(row)), index.get(dst.value(row)))
            else {
                continue;
            };
            let relation = kind.value(row);
            let rel = RELATIONS
                .iter()
                .position(|r| *r == relation)
                .unwrap_or(RELATIONS.len());
            g.edge_src.push(s as i64);
            g.edge_dst.push(d as i64);
            g.edge_type.push(rel as i64);
            if inventory.is_some_and(|a| a.value(row)) {
                degree[s][3] += 1.0;
                degree[d][4] += 1.0;
            } else {
                let n = count.map_or(1, |a| a.value(row).max(1)) as f64;
                degree[s][0] += n;
                degree[d][1] += n;
                if matches!(relation, "create" | "update" | "patch" | "delete" | "bind") {
                    degree[d][2] += n;
                }
            }
        }
    }
    for (i, d) in degree.iter().enumerate() {
        for (j, v) in d.iter().enumerate() {
            g.features[i * l.width + l.degrees + j] = log1p(*v);
        }
    }

    let mut counts: HashMap<usize, [f64; ACTIVITY.len()]> = HashMap::new();
    let mut namespaces: HashMap<usize, std::collections::BTreeSet<String>> = HashMap::new();
    for b in activity {
        let text = |name: &str| b.column_by_name(name).map(|c| c.as_string::<i32>());
        let (Some(subjects), Some(verbs), Some(count)) = (
            text("subject"),
            text("verb"),
            b.column_by_name("count")
                .map(|c| c.as_primitive::<Int64Type>()),
        ) else {
            continue;
        };
        let (resources, subresources, ns, impersonated) = (
            text("resource"),
            text("subresource"),
            text("namespace"),
            text("impersonated_user"),
        );
        let codes = b
            .column_by_name("response_code")
            .map(|c| c.as_primitive::<Int32Type>());
        for row in 0..b.num_rows() {
            let Some(&i) = index.get(&subject_node_id(subjects.value(row))) else {
                continue;
            };
            let value = |a| cell(a, row);
            let n = count.value(row) as f64;
            let verb = verbs.value(row);
            let resource = value(resources);
            let c = counts.entry(i).or_insert([0.0; ACTIVITY.len()]);
            let read = matches!(verb, "get" | "list" | "watch");
            let write = matches!(verb, "create" | "update" | "patch");
            c[0] += n;
            c[1] += 1.0;
            let mut add = |slot: usize, yes: bool| {
                if yes {
                    c[slot] += n;
                }
            };
            add(
                2,
                codes.is_some_and(|a| a.is_valid(row) && a.value(row) >= 400),
            );
            add(3, read);
            add(4, write);
            add(5, matches!(verb, "delete" | "deletecollection"));
            add(6, read && resource == "secrets");
            add(
                7,
                matches!(
                    value(subresources),
                    "exec" | "attach" | "portforward" | "proxy"
                ),
            );
            add(
                8,
                write && (resource.ends_with("roles") || resource.ends_with("rolebindings")),
            );
            add(
                9,
                resource.ends_with("accessreviews") || resource.ends_with("rulesreviews"),
            );
            add(10, !value(impersonated).is_empty());
            let ns = value(ns);
            if !ns.is_empty() {
                namespaces.entry(i).or_default().insert(ns.to_string());
            }
        }
    }
    for (i, mut c) in counts {
        c[ACTIVITY.len() - 1] = namespaces.get(&i).map_or(0, |s| s.len()) as f64;
        for (j, v) in c.iter().enumerate() {
            g.features[i * l.width + l.activity + j] = log1p(*v);
        }
    }

    let mut hits: HashMap<usize, usize> = HashMap::new();
    for f in findings {
        let Some(&i) = index.get(&subject_id(f)) else {
            continue;
        };
        let at = i * l.width + l.rules + tactic_index(f.tactic);
        g.features[at] = g.features[at].max(severity_weight(f.severity));
        *hits.entry(i).or_default() += 1;
    }
    for (i, n) in hits {
        g.features[i * l.width + l.hits] = log1p(n as f64);
    }
    g
}

/// Position of a tactic in [`Tactic::ALL`] (the model's tactic outputs use this order).
pub fn tactic_index(t: Tactic) -> usize {
    Tactic::ALL.iter().position(|x| *x == t).unwrap_or(0)
}
