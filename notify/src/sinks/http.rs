//! The HTTP side every HTTP sink shares: one client per sink, and the reading of a response
//! into success, retry (with the receiver's `Retry-After`) or refusal.

use std::time::Duration;

use reqwest::{Response, StatusCode};

use super::{SendError, SinkError, first_chars};

/// A configured HTTP client for one sink.
#[derive(Clone)]
pub struct HttpPoster {
    client: reqwest::Client,
}

impl HttpPoster {
    /// A client with `timeout` per request; `ca_file` adds a PEM CA bundle to trust (for
    /// receivers behind a private CA).
    pub fn new(
        sink: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, SinkError> {
        korvid_common::install_tls_provider();
        let err = |reason: String| SinkError {
            sink: sink.to_string(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("korvid/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| err(format!("{}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| err(e.to_string()))?;
        Ok(HttpPoster { client })
    }

    /// A request builder for a POST to `url`.
    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.client.post(url)
    }

    /// Sends `request` and reads the answer: 2xx is success (the response is returned for
    /// sinks that read per-item results); 408, 429 and 5xx are worth a retry; other statuses
    /// are refusals.
    ///
    /// The request carries the current trace context (`traceparent`) when notify is traced, so
    /// a receiver that traces too continues the trace from the audit event to its alert.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, SendError> {
        let request = match korvid_common::trace_context::current() {
            Some(tp) => request.header(korvid_common::trace_context::HEADER, tp),
            None => request,
        };
        let response = request.send().await.map_err(|e| SendError::Retryable {
            reason: describe(&e),
            retry_after: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        let reason = format!("HTTP {status}: {}", first_chars(&body, 300));
        if retryable(status) {
            Err(SendError::Retryable {
                reason,
                retry_after,
            })
        } else {
            Err(SendError::Refused { reason })
        }
    }
}

/// Statuses that may succeed later.
pub fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's own message omits the cause ("error sending request"); add the chain.
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
