//! The Schema Registry client against an in-process server that speaks the registry's REST API.
#![cfg(feature = "registry")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use korvid_schemas::codec::{Decoder, Framing, Record, encode};
use korvid_schemas::registry::SchemaRegistryClient;
use korvid_schemas::*;

#[derive(Default)]
struct Registry {
    by_subject: HashMap<String, u32>,
    by_id: HashMap<u32, String>,
    requests: usize,
}

type Shared = Arc<Mutex<Registry>>;

async fn register(
    State(reg): State<Shared>,
    Path(subject): Path<String>,
    body: String,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let schema = v["schema"].as_str().ok_or((
        StatusCode::UNPROCESSABLE_ENTITY,
        "{\"error_code\":42201,\"message\":\"Input schema is an invalid Avro schema\"}".into(),
    ))?;
    let mut r = reg.lock().expect("lock");
    r.requests += 1;
    let next = r.by_id.len() as u32 + 1;
    let id = *r.by_subject.entry(subject).or_insert(next);
    r.by_id.insert(id, schema.to_string());
    Ok(Json(serde_json::json!({ "id": id })))
}

async fn by_id(
    State(reg): State<Shared>,
    Path(id): Path<u32>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let mut r = reg.lock().expect("lock");
    r.requests += 1;
    match r.by_id.get(&id) {
        Some(s) => Ok(Json(serde_json::json!({ "schema": s }))),
        None => Err((
            StatusCode::NOT_FOUND,
            "{\"error_code\":40403,\"message\":\"Schema not found\"}".into(),
        )),
    }
}

#[tokio::test]
async fn registers_fetches_and_caches() {
    let reg: Shared = Arc::default();
    let app = Router::new()
        .route("/subjects/{subject}/versions", post(register))
        .route("/schemas/ids/{id}", get(by_id))
        .with_state(reg.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = SchemaRegistryClient::new(&format!("http://{addr}"), None);
    let id = client
        .register("korvid.findings.v1-value", Finding::AVSC)
        .await
        .expect("register");
    assert_eq!(
        client
            .register("korvid.findings.v1-value", Finding::AVSC)
            .await
            .expect("cached"),
        id
    );

    let dl = DeadLetter {
        cluster: Some("c".into()),
        event_time: 1,
        stage: "s".into(),
        error: "e".into(),
        error_kind: "k".into(),
        source_topic: None,
        source_partition: None,
        source_offset: None,
        payload: vec![1, 2],
        payload_truncated: false,
    };
    let bytes = encode(&dl, Framing::Confluent { schema_id: 1234 }).expect("encode");
    assert_eq!(codec::confluent_schema_id(&bytes), Some(1234));

    let schema = client.schema_by_id(id).await.expect("fetch");
    assert_eq!(
        schema.canonical_form(),
        Finding::compiled().schema().canonical_form()
    );
    client.schema_by_id(id).await.expect("cached fetch");
    assert_eq!(
        reg.lock().expect("lock").requests,
        2,
        "both calls were cached"
    );

    let mut decoder = Decoder::<Finding>::new();
    decoder.add_schema_id(id, schema);
    assert!(decoder.knows_schema_id(id));

    let missing = client.schema_by_id(999).await.expect_err("unknown id");
    assert!(missing.to_string().contains("404"), "{missing}");
    assert!(!missing.is_retriable());
}
