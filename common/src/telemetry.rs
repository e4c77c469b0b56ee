//! Telemetry: structured logs (text or JSON), Prometheus metrics with `/metrics`, liveness and
//! readiness on `/healthz` and `/readyz`, and OTLP trace export when an endpoint is configured.
//!
//! Metric labels are fixed and low-cardinality (component, topic, error kind): never names,
//! uids or digests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::{Metric, Registry};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::http_server::{BearerToken, HttpServer, ServeError, require_token};
use crate::settings::{SettingsError, Validate, require_socket_addr};
use crate::tls::ServerTlsSettings;

/// `[telemetry]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Address of the `/metrics`, `/healthz`, `/readyz` server. Empty disables it.
    pub listen: String,
    /// `text` or `json`.
    pub log_format: String,
    /// A tracing filter, e.g. `info,korvid_detect=debug`. `RUST_LOG` overrides it.
    pub log_level: String,
    /// OTLP/HTTP endpoint for traces (e.g. `http://otel-collector:4318/v1/traces`).
    pub otlp_endpoint: Option<String>,
    /// Serve the endpoints over HTTPS (and, with `client_ca_file`, only to clients with a
    /// certificate that CA signed).
    pub tls: Option<ServerTlsSettings>,
    /// File holding a token `/metrics` readers must send as `Authorization: Bearer <token>`.
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// Whether `/healthz` and `/readyz` need the token too. Off by default: the kubelet's probes
    /// send no token unless the pod spec carries it.
    pub probes_require_token: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            listen: "127.0.0.1:9464".into(),
            log_format: "text".into(),
            log_level: "info".into(),
            otlp_endpoint: None,
            tls: None,
            bearer_token_file: None,
            probes_require_token: false,
        }
    }
}

impl Validate for TelemetrySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if !self.listen.is_empty() {
            require_socket_addr("telemetry.listen", &self.listen)?;
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(SettingsError::invalid(
                "telemetry.log_format",
                format!("`{}` is neither `text` nor `json`", self.log_format),
            ));
        }
        EnvFilter::try_new(&self.log_level).map_err(|e| {
            SettingsError::invalid("telemetry.log_level", format!("not a valid filter: {e}"))
        })?;
        if let Some(ep) = &self.otlp_endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            return Err(SettingsError::invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        TelemetryAccess::from_settings(self)?;
        if self.probes_require_token && self.bearer_token_file.is_none() {
            return Err(SettingsError::invalid(
                "telemetry.probes_require_token",
                "needs telemetry.bearer_token_file",
            ));
        }
        Ok(())
    }
}

/// How the telemetry server is reached and who may read it: TLS, and a bearer token on
/// `/metrics` (and on the probes when asked).
#[derive(Debug, Clone, Default)]
pub struct TelemetryAccess {
    /// HTTPS settings; `None` serves plain HTTP.
    pub tls: Option<ServerTlsSettings>,
    /// The token readers must present; `None` leaves the endpoints open.
    pub token: Option<BearerToken>,
    /// Whether the probes need the token too.
    pub probes_require_token: bool,
}

impl TelemetryAccess {
    /// Checks the TLS files and reads the token named in `settings`.
    pub fn from_settings(settings: &TelemetrySettings) -> Result<Self, SettingsError> {
        if let Some(tls) = &settings.tls {
            tls.validate("telemetry.tls")?;
        }
        let token = match &settings.bearer_token_file {
            Some(f) => Some(BearerToken::from_file("telemetry.bearer_token_file", f)?),
            None => None,
        };
        Ok(TelemetryAccess {
            tls: settings.tls.clone(),
            token,
            probes_require_token: settings.probes_require_token,
        })
    }
}

/// Keeps the trace exporter alive; flushes it on drop.
pub struct LoggingGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LoggingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("korvid: flushing traces failed: {e}");
        }
    }
}

/// Installs the global tracing subscriber. Call once, early in `main`.
pub fn init_logging(
    settings: &TelemetrySettings,
    service: &str,
) -> Result<LoggingGuard, SettingsError> {
    use opentelemetry::trace::TracerProvider as _;

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .map_err(|e| SettingsError::invalid("telemetry.log_level", e.to_string()))?;
    let (otel_layer, provider) = match &settings.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig as _;
            crate::install_tls_provider();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| SettingsError::invalid("telemetry.otlp_endpoint", e.to_string()))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(format!("korvid-{service}"))
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("korvid"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    // Colours only for people at a terminal; files and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = if settings.log_format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    // A second init (tests, `up` after a failed start) keeps the first subscriber.
    drop(result);
    Ok(LoggingGuard { provider })
}

/// Shared metrics registry and readiness state.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    ready: Mutex<BTreeMap<String, bool>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// An empty registry with the `korvid` prefix.
    pub fn new() -> Self {
        Telemetry {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::with_prefix("korvid")),
                ready: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Registers a metric and returns it (metrics are cheap handles, clone them freely).
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        lock(&self.inner.registry).register(name, help, metric.clone());
        metric
    }

    /// Declares a component that must become ready before `/readyz` says yes (a component
    /// already declared keeps its state).
    pub fn declare(&self, component: &str) {
        lock(&self.inner.ready)
            .entry(component.to_string())
            .or_insert(false);
    }

    /// Marks a component ready or not.
    pub fn set_ready(&self, component: &str, ready: bool) {
        lock(&self.inner.ready).insert(component.to_string(), ready);
    }

    /// Components not ready yet (empty when ready). Before anything is declared the process
    /// is still starting, which counts as not ready.
    pub fn not_ready(&self) -> Vec<String> {
        let ready = lock(&self.inner.ready);
        if ready.is_empty() {
            return vec!["starting".to_string()];
        }
        ready
            .iter()
            .filter(|(_, r)| !**r)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::text::encode(&mut out, &lock(&self.inner.registry))
        {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The `/metrics`, `/healthz`, `/readyz` routes, with `access`'s token where it applies.
    pub fn router(&self, access: &TelemetryAccess) -> Router {
        let metrics = Router::new().route("/metrics", get(metrics));
        let probes = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz));
        let guard = |r: Router<Telemetry>, t: &BearerToken| {
            r.route_layer(axum::middleware::from_fn_with_state(
                t.clone(),
                require_token,
            ))
        };
        let (metrics, probes) = match &access.token {
            Some(t) if access.probes_require_token => (guard(metrics, t), guard(probes, t)),
            Some(t) => (guard(metrics, t), probes),
            None => (metrics, probes),
        };
        metrics.merge(probes).with_state(self.clone())
    }

    /// Serves [`Self::router`] on `addr` until shutdown; returns the bound address. Binding and
    /// the TLS files fail here, before anything is spawned.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        access: &TelemetryAccess,
        shutdown: crate::Shutdown,
    ) -> Result<SocketAddr, ServeError> {
        let server = HttpServer::bind(addr, access.tls.as_ref())?;
        let bound = server.local_addr();
        let (tls, token) = (server.is_tls(), access.token.is_some());
        let app = self.router(access);
        tokio::spawn(async move {
            if let Err(e) = server.serve(app, shutdown).await {
                tracing::error!(error = %e, "telemetry server failed");
            }
        });
        tracing::info!(%bound, tls, token, "serving /metrics, /healthz, /readyz");
        Ok(bound)
    }
}

async fn metrics(State(t): State<Telemetry>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.encode(),
    )
}

async fn readyz(State(t): State<Telemetry>) -> impl IntoResponse {
    let waiting = t.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Metrics and readiness stay usable even if a panicking thread held the lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
