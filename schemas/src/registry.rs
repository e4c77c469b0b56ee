//! A small Confluent Schema Registry client: register a subject's schema, fetch a schema by id.
//!
//! Subjects follow the TopicNameStrategy (`<topic>-value`). Ids are cached, so each schema costs
//! one request per process.

use std::collections::HashMap;
use std::sync::Mutex;

use apache_avro::Schema;
use serde::Deserialize;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered with a transport error.
    #[error("schema registry at {url} unreachable: {reason}")]
    Unreachable {
        /// Registry URL.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("schema registry refused {what}: HTTP {status}: {body}")]
    Refused {
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// Response body (the registry's error message).
        body: String,
    },
    /// The registry returned a schema that does not parse.
    #[error("schema registry returned an invalid schema for id {id}: {reason}")]
    InvalidSchema {
        /// Schema id.
        id: u32,
        /// Parse error.
        reason: String,
    },
}

impl RegistryError {
    /// Whether retrying later may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Refused { status, .. } => *status >= 500 || *status == 429,
            RegistryError::InvalidSchema { .. } => false,
        }
    }
}

/// Basic-auth credentials for the registry.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    /// User name (Confluent Cloud: API key).
    pub username: String,
    /// Password (Confluent Cloud: API secret).
    pub password: String,
}

/// Client for one registry.
pub struct SchemaRegistryClient {
    base: String,
    http: reqwest::Client,
    auth: Option<RegistryAuth>,
    ids: Mutex<HashMap<String, u32>>,
    schemas: Mutex<HashMap<u32, Schema>>,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl SchemaRegistryClient {
    /// A client for the registry at `url` (e.g. `http://localhost:8081`).
    pub fn new(url: &str, auth: Option<RegistryAuth>) -> Self {
        // reqwest is built without a default TLS provider; ring is ours (Err = already set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        SchemaRegistryClient {
            base: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            auth,
            ids: Mutex::new(HashMap::new()),
            schemas: Mutex::new(HashMap::new()),
        }
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(a) => builder.basic_auth(&a.username, Some(&a.password)),
            None => builder,
        }
    }

    /// Registers `schema_json` under `subject` (idempotent) and returns its id.
    pub async fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        if let Some(id) = lock(&self.ids).get(subject) {
            return Ok(*id);
        }
        let url = format!("{}/subjects/{}/versions", self.base, subject);
        let body = serde_json::json!({ "schema": schema_json, "schemaType": "AVRO" });
        let resp = self
            .request(self.http.post(&url))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let id = read_json::<IdResponse>(resp, &format!("register {subject}"))
            .await?
            .id;
        lock(&self.ids).insert(subject.to_string(), id);
        Ok(id)
    }

    /// Fetches (and caches) the schema with the given id.
    pub async fn schema_by_id(&self, id: u32) -> Result<Schema, RegistryError> {
        if let Some(s) = lock(&self.schemas).get(&id) {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{}", self.base, id);
        let resp = self
            .request(self.http.get(&url))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let text = read_json::<SchemaResponse>(resp, &format!("schema id {id}"))
            .await?
            .schema;
        let schema = Schema::parse_str(&text).map_err(|e| RegistryError::InvalidSchema {
            id,
            reason: e.to_string(),
        })?;
        lock(&self.schemas).insert(id, schema.clone());
        Ok(schema)
    }

    fn unreachable(&self, e: reqwest::Error) -> RegistryError {
        RegistryError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned cache only means another task panicked mid-insert; the map is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
) -> Result<T, RegistryError> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(RegistryError::Refused {
            what: what.to_string(),
            status: status.as_u16(),
            body,
        });
    }
    serde_json::from_str(&body).map_err(|e| RegistryError::Refused {
        what: what.to_string(),
        status: status.as_u16(),
        body: format!("unexpected body ({e}): {body}"),
    })
}
