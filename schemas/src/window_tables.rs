//! The Arrow schemas of a graph window's tables (`nodes`, `edges`, `activity`).
//!
//! enrich writes them as Arrow IPC streams inside a GraphWindow; detect's rules query them with
//! SQL. Column names here are what rule authors write, so they are part of the contract.

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// `nodes`: one row per entity in the window.
///
/// `id` is `kind/namespace/name` (namespace empty for cluster-scoped entities and users).
pub fn nodes() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("namespace", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, false),
            Field::new("cluster", DataType::Utf8, false),
            Field::new("is_service_account", DataType::Boolean, false),
            Field::new("is_system", DataType::Boolean, false),
            Field::new("first_seen", ts(), false),
            Field::new("last_seen", ts(), false),
        ]))
    })
    .clone()
}

/// `edges`: one row per relation between two nodes.
///
/// Activity relations (`exec`, `get_secret`, `bind`, `delete`, ...) carry counts and times.
pub fn edges() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("src", DataType::Utf8, false),
            Field::new("dst", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("first_time", ts(), false),
            Field::new("last_time", ts(), false),
        ]))
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
