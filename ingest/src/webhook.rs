//! The audit webhook: kube-apiserver's webhook backend POSTs `EventList`s here; each is parsed,
//! sanitised and written to the audit topic, and answered only once Kafka has every event (the
//! API server retries what it did not get acknowledged).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use korvid_common::ServiceContext;
use korvid_common::http_server::{BearerToken, HttpServer, ServeError, unauthorized};
use korvid_common::kafka::{DeadLetterSource, DeadLetters, KafkaClientError, RecordProducer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;

use crate::audit::{parse_body, partition_key};
use crate::audit_log::AuditLogTail;
use crate::sanitize::Sanitizer;
use crate::settings::IngestSettings;

const STAGE: &str = "ingest.audit_webhook";
const COMPONENT: &str = "ingest";

/// Why ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (ingest.audit_webhook.listen): {source}")]
    Bind {
        /// Address.
        addr: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Kafka clients could not be created.
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// The server failed.
    #[error("audit webhook server failed: {0}")]
    Serve(std::io::Error),
    /// The Kubernetes API client could not be set up.
    #[error("ingest.kubernetes: {0}")]
    Kubernetes(String),
    /// TLS or the token could not be loaded.
    #[error("ingest.audit_webhook: {0}")]
    Security(String),
}

#[derive(Clone)]
struct Metrics {
    batches: Family<Vec<(String, String)>, Counter>,
    events_accepted: Counter,
    events_rejected: Counter,
}

struct Shared {
    bearer_token: Option<BearerToken>,
    cluster: String,
    topic: String,
    scans_topic: String,
    sanitizer: Sanitizer,
    producer: RecordProducer,
    dead_letters: DeadLetters,
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

/// The webhook, ready to serve.
#[derive(Clone)]
pub struct AuditWebhook {
    shared: Arc<Shared>,
    path: String,
    scans_path: String,
    max_body: usize,
}

impl AuditWebhook {
    /// Builds the webhook's Kafka clients and metrics.
    pub fn build(
        settings: &IngestSettings,
        ctx: &ServiceContext,
        sanitizer: Sanitizer,
    ) -> Result<Self, IngestError> {
        let producer = ctx.kafka.producer()?;
        let dead_letters = ctx.kafka.dead_letters(producer.clone());
        let t = &ctx.telemetry;
        let metrics = Metrics {
            batches: t.register(
                "ingest_audit_batches",
                "Audit webhook requests, by result",
                Family::default(),
            ),
            events_accepted: t.register(
                "ingest_audit_events_accepted",
                "Audit events written to Kafka",
                Counter::default(),
            ),
            events_rejected: t.register(
                "ingest_audit_events_rejected",
                "Audit events refused and dead-lettered",
                Counter::default(),
            ),
        };
        let w = &settings.audit_webhook;
        let bearer_token = match &w.bearer_token_file {
            Some(f) => Some(
                BearerToken::from_file("ingest.audit_webhook.bearer_token_file", f)
                    .map_err(|e| IngestError::Security(e.to_string()))?,
            ),
            None => None,
        };
        Ok(AuditWebhook {
            shared: Arc::new(Shared {
                bearer_token,
                cluster: settings.cluster.clone(),
                topic: ctx.kafka.topics.audit.clone(),
                scans_topic: ctx.kafka.topics.scans.clone(),
                sanitizer,
                producer,
                dead_letters,
                permits: Arc::new(Semaphore::new(w.max_in_flight)),
                metrics,
            }),
            path: w.path.clone(),
            scans_path: w.scans_path.clone(),
            max_body: w.max_body_bytes,
        })
    }

    /// The HTTP routes (bearer-token check first, then the body limit).
    pub fn router(&self) -> Router {
        Router::new()
            .route(&self.path, post(receive))
            .route(&self.scans_path, post(receive_scan))
            .layer(DefaultBodyLimit::max(self.max_body))
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                require_token,
            ))
            .with_state(self.shared.clone())
    }
}

/// Runs ingest until shutdown: the audit webhook (unless disabled) and a tail per audit log.
pub async fn run(settings: IngestSettings, ctx: ServiceContext) -> Result<(), IngestError> {
    ctx.telemetry.declare(COMPONENT);
    let sanitizer = Sanitizer::for_settings(&settings);
    let mut tails = start_tails(&settings, &ctx, &sanitizer)?;
    tails.extend(start_scan_dirs(&settings, &ctx, &sanitizer)?);
    if settings.kubernetes.enabled {
        tails.extend(
            crate::kube_watch::start(&settings.kubernetes, &settings.cluster, &sanitizer, &ctx)
                .await?,
        );
    }
    if !settings.audit_webhook.enabled {
        tracing::info!("audit webhook disabled (ingest.audit_webhook.enabled = false)");
        ctx.telemetry.set_ready(COMPONENT, true);
        ctx.shutdown.triggered().await;
        return join_tails(tails).await;
    }
    serve_webhook(&settings, &ctx, sanitizer).await?;
    join_tails(tails).await
}

type TailTask = tokio::task::JoinHandle<Result<(), KafkaClientError>>;

fn start_tails(
    settings: &IngestSettings,
    ctx: &ServiceContext,
    sanitizer: &Sanitizer,
) -> Result<Vec<TailTask>, IngestError> {
    if settings.audit_logs.is_empty() {
        return Ok(Vec::new());
    }
    let producer = ctx.kafka.producer()?;
    let t = &ctx.telemetry;
    let events: Counter = t.register(
        "ingest_audit_log_events",
        "Audit events read from log files and written to Kafka",
        Counter::default(),
    );
    let rotations: Counter = t.register(
        "ingest_audit_log_rotations",
        "Audit log rotations and truncations followed",
        Counter::default(),
    );
    Ok(settings
        .audit_logs
        .iter()
        .map(|log| {
            let tail = AuditLogTail::new(
                log.clone(),
                &settings.cluster,
                sanitizer.clone(),
                producer.clone(),
                ctx,
                events.clone(),
                rotations.clone(),
            );
            tokio::spawn(tail.run(ctx.clone()))
        })
        .collect())
}

fn start_scan_dirs(
    settings: &IngestSettings,
    ctx: &ServiceContext,
    sanitizer: &Sanitizer,
) -> Result<Vec<TailTask>, IngestError> {
    if settings.scan_dirs.is_empty() {
        return Ok(Vec::new());
    }
    let producer = ctx.kafka.producer()?;
    let results: Family<Vec<(String, String)>, Counter> = ctx.telemetry.register(
        "ingest_scan_dir_reports",
        "Scan reports read from watched directories, by result",
        Family::default(),
    );
    Ok(settings
        .scan_dirs
        .iter()
        .map(|d| {
            let dir = crate::scan_dir::ScanDir::new(
                d.clone(),
                &settings.cluster,
                producer.clone(),
                sanitizer.clone(),
                ctx,
                results.clone(),
            );
            tokio::spawn(dir.run(ctx.clone()))
        })
        .collect())
}

async fn join_tails(tails: Vec<TailTask>) -> Result<(), IngestError> {
    for t in tails {
        match t.await {
            Ok(r) => r?,
            Err(e) => return Err(IngestError::Serve(std::io::Error::other(e.to_string()))),
        }
    }
    Ok(())
}

/// Serves the audit webhook until shutdown, then flushes its producer.
async fn serve_webhook(
    settings: &IngestSettings,
    ctx: &ServiceContext,
    sanitizer: Sanitizer,
) -> Result<(), IngestError> {
    let webhook = AuditWebhook::build(settings, ctx, sanitizer)?;
    let addr: SocketAddr =
        settings
            .audit_webhook
            .listen
            .parse()
            .map_err(|e| IngestError::Bind {
                addr: settings.audit_webhook.listen.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
    let server =
        HttpServer::bind(addr, settings.audit_webhook.tls.as_ref()).map_err(|e| match e {
            ServeError::Bind { addr, source } => IngestError::Bind { addr, source },
            other => IngestError::Security(other.to_string()),
        })?;
    let bound = server.local_addr();
    let (scheme, mtls) = match &settings.audit_webhook.tls {
        Some(tls) => ("HTTPS", tls.client_ca_file.is_some()),
        None => ("plain HTTP", false),
    };
    tracing::info!(%bound, path = %settings.audit_webhook.path, scheme, mtls, "audit webhook listening");
    ctx.telemetry.set_ready(COMPONENT, true);
    server
        .serve(webhook.router(), ctx.shutdown.clone())
        .await
        .map_err(IngestError::Serve)?;
    // Requests in flight were answered only after their events were acknowledged, so a flush
    // here only covers dead letters still on their way.
    let _ = webhook
        .shared
        .producer
        .flush(std::time::Duration::from_secs(5));
    tracing::info!("audit webhook stopped");
    Ok(())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// One audit batch, traced: the API server's `traceparent` (if it sent one) is continued, and
/// every event record carries the batch span's context on to enrich.
async fn receive(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    use tracing::Instrument as _;
    let parent = headers
        .get(korvid_common::trace_context::HEADER)
        .and_then(|v| v.to_str().ok());
    let span = korvid_common::trace_context::span_after(
        tracing::info_span!("ingest.audit_batch", bytes = body.len()),
        parent,
    );
    receive_batch(s, body).instrument(span).await
}

async fn receive_batch(s: Arc<Shared>, body: Bytes) -> Response {
    let Ok(_permit) = s.permits.clone().try_acquire_owned() else {
        return busy(&s);
    };
    let batch = match parse_body(&body, &s.cluster, &s.sanitizer) {
        Ok(b) => b,
        Err(e) => {
            // Refused bodies may hold secrets too: they are sanitised before they leave ingest.
            let kind = e.kind();
            let clean = s.sanitizer.sanitize_rejected_body(&body);
            let source = DeadLetterSource {
                cluster: Some(s.cluster.clone()),
                ..Default::default()
            };
            if let Err(dl) = s
                .dead_letters
                .send(STAGE, kind, &e.to_string(), &clean, source)
                .await
            {
                count(&s, "unavailable");
                return unavailable(&dl);
            }
            count(&s, "malformed");
            return json_response(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": e.to_string(), "kind": kind}),
            );
        }
    };

    // Queue the whole batch, then wait for every acknowledgement. On failure some events may
    // be in Kafka already; the API server resends the batch and enrich folds duplicates by
    // auditID.
    let mut pending = Vec::with_capacity(batch.events.len());
    for ev in &batch.events {
        match s.producer.enqueue(&s.topic, &partition_key(ev), ev).await {
            Ok(p) => pending.push(p),
            Err(e) => {
                count(&s, "unavailable");
                return unavailable(&e);
            }
        }
    }
    for p in pending {
        if let Err(e) = p.acknowledged().await {
            count(&s, "unavailable");
            return unavailable(&e);
        }
    }
    let mut errors = Vec::new();
    for (err, raw) in &batch.rejected {
        let source = DeadLetterSource {
            cluster: Some(s.cluster.clone()),
            ..Default::default()
        };
        if let Err(dl) = s
            .dead_letters
            .send(STAGE, err.kind(), &err.to_string(), raw, source)
            .await
        {
            count(&s, "unavailable");
            return unavailable(&dl);
        }
        errors.push(err.to_string());
    }
    s.metrics.events_accepted.inc_by(batch.events.len() as u64);
    s.metrics
        .events_rejected
        .inc_by(batch.rejected.len() as u64);
    count(&s, if errors.is_empty() { "ok" } else { "partial" });
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "accepted": batch.events.len(),
            "rejected": batch.rejected.len(),
            "errors": errors,
        }),
    )
}

/// Takes one Trivy or Grype JSON report and writes it as an ImageScan keyed by digest.
#[tracing::instrument(name = "ingest.scan", skip_all, fields(bytes = body.len()))]
async fn receive_scan(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(_permit) = s.permits.clone().try_acquire_owned() else {
        return busy(&s);
    };
    match crate::scans::parse_scan(&body, &s.cluster, korvid_common::now_millis()) {
        Ok(scan) => match s
            .producer
            .send(&s.scans_topic, &scan.image_digest, &scan)
            .await
        {
            Ok(_) => {
                count(&s, "scan");
                json_response(
                    StatusCode::OK,
                    serde_json::json!({
                        "image_digest": scan.image_digest,
                        "scanner": scan.scanner,
                        "vulnerabilities": scan.vulnerabilities.len(),
                    }),
                )
            }
            Err(e) => unavailable(&e),
        },
        Err(e) => {
            let source = DeadLetterSource {
                cluster: Some(s.cluster.clone()),
                ..Default::default()
            };
            if let Err(dl) = s
                .dead_letters
                .send(
                    "ingest.scans",
                    e.kind(),
                    &e.to_string(),
                    &s.sanitizer.sanitize_scan_report(&body),
                    source,
                )
                .await
            {
                return unavailable(&dl);
            }
            count(&s, "malformed_scan");
            json_response(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": e.to_string(), "kind": e.kind()}),
            )
        }
    }
}

/// The 429 with Retry-After sent when `max_in_flight` requests are being handled.
fn busy(s: &Shared) -> Response {
    count(s, "throttled");
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        serde_json::json!({"error": "ingest is at capacity; retry shortly"}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Refuses requests without the configured bearer token (401, nothing else is read).
async fn require_token(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &s.bearer_token
        && !token.admits(req.headers())
    {
        count(&s, "unauthorized");
        return unauthorized();
    }
    next.run(req).await
}

fn count(s: &Shared, result: &str) {
    s.metrics
        .batches
        .get_or_create(&vec![("result".into(), result.to_string())])
        .inc();
}

fn unavailable(e: &KafkaClientError) -> Response {
    tracing::error!(error = %e, "audit batch not stored; asking the API server to retry");
    let mut resp = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": format!("events not stored: {e}")}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}
