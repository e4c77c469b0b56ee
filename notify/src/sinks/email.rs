//! Email over SMTP: one plain-text message per notification group, to a fixed list of
//! recipients, through the organisation's relay (STARTTLS on 587 by default, implicit TLS on
//! 465, or plain for a relay on the same host). Sent with `lettre`; a transient SMTP answer
//! (4xx) or a connection failure is retried by the worker, a permanent one (5xx) is a refusal.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use super::worker::DeliverySettings;
use super::{Delivery, SendError, Shape, Sink, SinkError, render_text};

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required; port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or network segment.
    None,
}

/// `[[notify.sinks]] kind = "email"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// SMTP relay host.
    pub host: String,
    /// Port (default 587).
    #[serde(default = "default_port")]
    pub port: u16,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default = "default_security")]
    pub security: SmtpSecurity,
    /// Login, if the relay wants one (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// Sender (`korvid <korvid@example.com>`).
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// PEM CA bundle to trust besides the system's (private relays).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Queue, rate, retries, breaker.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

fn default_port() -> u16 {
    587
}

fn default_security() -> SmtpSecurity {
    SmtpSecurity::Starttls
}

impl EmailSettings {
    /// Checks addresses and files; `key` is the settings path.
    pub fn validate(&self, key: &str) -> Result<(), korvid_common::settings::SettingsError> {
        use korvid_common::settings::{SettingsError, require_non_empty};
        require_non_empty(&format!("{key}.host"), &self.host)?;
        if self.from.parse::<Mailbox>().is_err() {
            return Err(SettingsError::invalid(
                format!("{key}.from"),
                format!("`{}` is not an email address", self.from),
            ));
        }
        if self.to.is_empty() {
            return Err(SettingsError::invalid(
                format!("{key}.to"),
                "needs at least one recipient",
            ));
        }
        for t in &self.to {
            if t.parse::<Mailbox>().is_err() {
                return Err(SettingsError::invalid(
                    format!("{key}.to"),
                    format!("`{t}` is not an email address"),
                ));
            }
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(SettingsError::invalid(
                format!("{key}.username"),
                "username and password go together",
            ));
        }
        if let Some(p) = &self.ca_file
            && !p.is_file()
        {
            return Err(SettingsError::invalid(
                format!("{key}.ca_file"),
                format!("{} is not a readable file", p.display()),
            ));
        }
        self.delivery.validate(key)
    }
}

/// Sends each group as one email.
pub struct EmailSink {
    name: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl EmailSink {
    /// A sink for a relay; addresses and the CA file are read here.
    pub fn new(s: &EmailSettings) -> Result<Self, SinkError> {
        let err = |reason: String| SinkError {
            sink: s.name.clone(),
            reason,
        };
        let from = s
            .from
            .parse::<Mailbox>()
            .map_err(|e| err(format!("from: {e}")))?;
        let to =
            s.to.iter()
                .map(|t| t.parse::<Mailbox>().map_err(|e| err(format!("to: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .timeout(Some(Duration::from_millis(s.delivery.timeout_ms)));
        if s.security != SmtpSecurity::None {
            let mut params = TlsParameters::builder(s.host.clone());
            if let Some(path) = &s.ca_file {
                let pem =
                    std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| err(format!("{}: {e}", path.display())))?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build().map_err(|e| err(e.to_string()))?;
            builder = builder.tls(match s.security {
                SmtpSecurity::Tls => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(EmailSink {
            name: s.name.clone(),
            from,
            to,
            transport: builder.build(),
        })
    }
}

/// The subject and plain-text body for a group.
pub fn email_text(d: &Delivery) -> (String, String) {
    let firing = d
        .alerts
        .iter()
        .filter(|a| a.status == korvid_schemas::AlertStatus::Firing)
        .count();
    let top = d
        .alerts
        .iter()
        .map(|a| a.severity)
        .max()
        .map_or("-", |s| s.as_str());
    let subject = format!(
        "[korvid {top}] {firing} firing, {} resolved in {}",
        d.alerts.len() - firing,
        d.group
    );
    let mut body = String::new();
    for a in &d.alerts {
        body.push_str(&render_text(a));
        body.push('\n');
    }
    (subject, body)
}

#[async_trait::async_trait]
impl Sink for EmailSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> Shape {
        Shape::Grouped
    }

    async fn send(&self, d: &Delivery) -> Result<(), SendError> {
        let (subject, body) = email_text(d);
        let mut message = Message::builder().from(self.from.clone()).subject(subject);
        for t in &self.to {
            message = message.to(t.clone());
        }
        let message = message
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(SendError::refused)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::refused(e)),
            Err(e) => Err(SendError::retry(e)),
        }
    }
}
