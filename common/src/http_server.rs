//! korvid's HTTP servers (the audit webhook, `/metrics` and the probes): bound up front so a bad
//! address fails before anything runs, served as plain HTTP or over TLS (optionally mutual), with
//! an optional bearer token, and stopped gracefully on shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Shutdown;
use crate::settings::SettingsError;
use crate::tls::{ServerTlsSettings, TlsError};

/// Shortest accepted token: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// How long requests in flight may take to finish once shutdown starts (TLS servers; plain ones
/// wait for them without a limit, as axum does).
const TLS_GRACE: Duration = Duration::from_secs(5);

/// A server that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate, key or client CA could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The bearer token could not be read or is too short.
    #[error(transparent)]
    Token(#[from] SettingsError),
}

/// A secret clients present as `Authorization: Bearer <token>`. Its `Debug` never shows it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Reads the token from `path` (surrounding whitespace ignored); `key` names the setting in
    /// errors, e.g. `telemetry.bearer_token_file`.
    pub fn from_file(key: &str, path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SettingsError::invalid(key, format!("cannot read {}: {e}", path.display()))
        })?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(SettingsError::invalid(
                key,
                format!("the token must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        Ok(BearerToken(token.into()))
    }

    /// Whether `headers` carry this token. Compared without an early exit, so response timing
    /// does not tell how much of a guess was right.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        constant_time_eq(presented.as_bytes(), self.0.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The answer to a request without the right token: 401, `WWW-Authenticate: Bearer` and a short
/// JSON error. Nothing of the request is read.
pub fn unauthorized() -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({"error": "missing or wrong bearer token"})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Middleware for `axum::middleware::from_fn_with_state(token, require_token)`: refuses
/// requests without the token.
pub async fn require_token(State(token): State<BearerToken>, req: Request, next: Next) -> Response {
    if token.admits(req.headers()) {
        next.run(req).await
    } else {
        unauthorized()
    }
}

/// A bound listener and, for HTTPS, its checked TLS configuration.
pub struct HttpServer {
    listener: std::net::TcpListener,
    bound: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpServer {
    /// Binds `addr` and loads the TLS files when `tls` is set, so both fail here, not later.
    pub fn bind(addr: SocketAddr, tls: Option<&ServerTlsSettings>) -> Result<Self, ServeError> {
        let bind_error = |source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let tls = match tls {
            Some(t) => Some(Arc::new(t.server_config()?)),
            None => None,
        };
        Ok(HttpServer {
            listener,
            bound,
            tls,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.bound
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `router` until `shutdown` is triggered.
    pub async fn serve(self, router: Router, shutdown: Shutdown) -> std::io::Result<()> {
        match self.tls {
            Some(config) => {
                let handle = axum_server::Handle::new();
                let on_stop = handle.clone();
                tokio::spawn(async move {
                    shutdown.triggered().await;
                    on_stop.graceful_shutdown(Some(TLS_GRACE));
                });
                let rustls = axum_server::tls_rustls::RustlsConfig::from_config(config);
                axum_server::from_tcp_rustls(self.listener, rustls)?
                    .handle(handle)
                    .serve(router.into_make_service())
                    .await
            }
            None => {
                let listener = tokio::net::TcpListener::from_std(self.listener)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { shutdown.triggered().await })
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write token");
        f
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("header"),
        );
        h
    }

    #[test]
    fn a_token_admits_only_itself() {
        let f = token_file("  s3cret-token-of-twenty\n");
        let token = BearerToken::from_file("t", f.path()).expect("token");
        assert!(token.admits(&headers("Bearer s3cret-token-of-twenty")));
        assert!(!token.admits(&headers("Bearer s3cret-token-of-twent")));
        assert!(!token.admits(&headers("Bearer s3cret-token-of-twenty!")));
        assert!(!token.admits(&headers("bearer s3cret-token-of-twenty")));
        assert!(!token.admits(&headers("Basic czNjcmV0")));
        assert!(!token.admits(&HeaderMap::new()));
        assert_eq!(format!("{token:?}"), "BearerToken(<redacted>)");
    }

    #[test]
    fn short_or_missing_tokens_are_refused_with_the_key() {
        let f = token_file("short\n");
        let e = BearerToken::from_file("telemetry.bearer_token_file", f.path()).expect_err("short");
        assert!(e.to_string().contains("telemetry.bearer_token_file"), "{e}");
        assert!(e.to_string().contains("16 characters"), "{e}");
        let e = BearerToken::from_file("k", Path::new("/nonexistent/token")).expect_err("missing");
        assert!(
            e.to_string().contains("cannot read /nonexistent/token"),
            "{e}"
        );
    }

    #[test]
    fn a_taken_address_fails_at_bind() {
        let first = HttpServer::bind("127.0.0.1:0".parse().expect("addr"), None).expect("bind");
        let e = HttpServer::bind(first.local_addr(), None)
            .err()
            .expect("second bind fails");
        assert!(
            e.to_string().starts_with("cannot listen on 127.0.0.1:"),
            "{e}"
        );
        assert!(!first.is_tls());
    }
}
