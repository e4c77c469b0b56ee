//! The Arrow schemas of a graph window's tables (`nodes`, `edges`, `activity`).
//!
//! enrich writes them as Arrow IPC streams inside a GraphWindow; detect's rules query them with
//! SQL. Column names here are what rule authors write, so they are part of the contract.

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Inventory attributes of `nodes` that are flags (null when the entity does not have them).
pub const NODE_FLAGS: &[&str] = &[
    "privileged",
    "host_pid",
    "host_ipc",
    "host_network",
    "share_process_namespace",
    "may_run_as_root",
    "allow_privilege_escalation",
    "read_only_root",
    "token_mounted",
    "automount_token",
    "host_path_mounted",
    "scanned",
    "known_exploited",
    "selinux_custom",
    "proc_mount_unmasked",
    "host_process",
    "probe_host",
];

/// Inventory attributes of `nodes` that are text (lists comma-joined; `labels` is the object's
/// labels as `key=value` pairs sorted by key, comma-joined; a container has its pod's).
pub const NODE_TEXTS: &[&str] = &[
    "linux_capabilities",
    "rbac_capabilities",
    "host_path",
    "image",
    "images",
    "registry",
    "digest",
    "service_type",
    "ports",
    "source",
    "type",
    "role",
    "invalid",
    "seccomp_profile",
    "apparmor_profile",
    "unsafe_sysctls",
    "flex_volume_drivers",
    "volume_types",
    "labels",
];

/// Inventory attributes of `nodes` that are numbers.
pub const NODE_NUMBERS: &[&str] = &["vuln_critical", "vuln_high", "vuln_fixable"];

/// Inventory attributes of `edges` that are flags.
pub const EDGE_FLAGS: &[&str] = &["read_only", "token_mounted"];

/// Inventory attributes of `edges` that are text.
pub const EDGE_TEXTS: &[&str] = &[
    "binding",
    "scope",
    "rbac_capabilities",
    "path",
    "exposure",
    "port_name",
];

/// Inventory attributes of `edges` that are numbers.
pub const EDGE_NUMBERS: &[&str] = &["port"];

fn attribute_fields(flags: &[&str], texts: &[&str], numbers: &[&str]) -> Vec<Field> {
    let mut out = vec![Field::new("in_inventory", DataType::Boolean, false)];
    out.extend(
        flags
            .iter()
            .map(|n| Field::new(*n, DataType::Boolean, true)),
    );
    out.extend(texts.iter().map(|n| Field::new(*n, DataType::Utf8, true)));
    out.extend(
        numbers
            .iter()
            .map(|n| Field::new(*n, DataType::Int64, true)),
    );
    out
}

/// `nodes`: one row per entity in the window: what activity touched, and the inventory's
/// entities within two relations of it, with their typed attributes.
///
/// `id` is `kind/namespace/name` (namespace empty for cluster-scoped entities and users).
/// `in_focus` marks what the window is about: entities its activity touched or that changed
/// since the previous window of their namespace (every entity, in a full window); the rest is
/// context for joins.
pub fn nodes() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("namespace", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, false),
            Field::new("cluster", DataType::Utf8, false),
            Field::new("is_service_account", DataType::Boolean, false),
            Field::new("is_system", DataType::Boolean, false),
            Field::new("first_seen", ts(), false),
            Field::new("last_seen", ts(), false),
            Field::new("in_focus", DataType::Boolean, false),
        ];
        fields.extend(attribute_fields(NODE_FLAGS, NODE_TEXTS, NODE_NUMBERS));
        Arc::new(Schema::new(fields))
    })
    .clone()
}

/// `edges`: one row per relation between two nodes.
///
/// Activity relations (`exec`, `get_secret`, `bind`, `delete`, ...) carry counts and times;
/// inventory relations (`runs_on`, `uses_sa`, `bound_to`, `mounts`, `exposes`, ...) have
/// `in_inventory` set, count 0 and the window's end as their times.
pub fn edges() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let mut fields = vec![
            Field::new("src", DataType::Utf8, false),
            Field::new("dst", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("first_time", ts(), false),
            Field::new("last_time", ts(), false),
        ];
        fields.extend(attribute_fields(EDGE_FLAGS, EDGE_TEXTS, EDGE_NUMBERS));
        Arc::new(Schema::new(fields))
    })
    .clone()
}

/// `activity`: audit events aggregated per (subject, verb, resource, subresource, target,
/// response code, object reference).
pub fn activity() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
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
            Field::new("source_ips", DataType::Utf8, true),
            Field::new("user_agent", DataType::Utf8, true),
            Field::new("sample_uri", DataType::Utf8, true),
            Field::new("count", DataType::Int64, false),
            Field::new("first_time", ts(), false),
            Field::new("last_time", ts(), false),
            Field::new("sample_event_ids", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// `kube_events`: Kubernetes Events in the window, one row per (involved object, reason, type).
pub fn kube_events() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("cluster", DataType::Utf8, false),
            Field::new("namespace", DataType::Utf8, true),
            Field::new("involved_kind", DataType::Utf8, false),
            Field::new("involved_name", DataType::Utf8, false),
            Field::new("involved", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("message", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, true),
            Field::new("count", DataType::Int64, false),
            Field::new("first_time", ts(), false),
            Field::new("last_time", ts(), false),
        ]))
    })
    .clone()
}

/// The entity an audited request's user is: a service account (`system:serviceaccount:NS:NAME`)
/// or a user, as (kind, namespace, name).
pub fn subject_node(user: &str) -> (&'static str, Option<&str>, &str) {
    if let Some(rest) = user.strip_prefix("system:serviceaccount:")
        && let Some((ns, name)) = rest.split_once(':')
    {
        return ("ServiceAccount", Some(ns), name);
    }
    ("User", None, user)
}

/// The `nodes.id` of an audited request's user (see [`subject_node`]).
pub fn subject_node_id(user: &str) -> String {
    let (kind, ns, name) = subject_node(user);
    format!("{kind}/{}/{name}", ns.unwrap_or(""))
}
