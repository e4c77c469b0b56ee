//! Alerts to a syslog receiver (rsyslog, syslog-ng, a SIEM's collector) as RFC 5424 messages,
//! over UDP (RFC 5426), TCP (RFC 6587 octet counting) or TLS (RFC 5425), with the alert as
//! one-line JSON or as a CEF line in MSG.
//!
//! One message per alert:
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [korvid@32473 id=".." fingerprint=".." ..] MSG
//! ```
//!
//! - PRI is `facility * 8 + severity`: critical → 2 (crit), high → 3 (err), medium → 4
//!   (warning), low → 5 (notice); a resolved alert is 6 (info) whatever its severity.
//! - TIMESTAMP is the alert's `event_time`; HOSTNAME defaults to the alert's cluster; MSGID is
//!   `alert` or `resolved`. Header fields are cut to printable US-ASCII and the RFC's lengths.
//! - The structured-data ID `korvid@32473` uses 32473, the private enterprise number IANA
//!   reserves for documentation (RFC 5612): korvid has no PEN of its own, and the element is
//!   only meant to be read by korvid-aware receivers.
//! - MSG carries no UTF-8 BOM although RFC 5424 asks for one before UTF-8 text: receivers keep
//!   it as part of the message (rsyslog does), which breaks the JSON and CEF parsers behind
//!   them. The message is then "MSG-ANY" in the RFC's terms; it is UTF-8 all the same.
//!
//! Reliability belongs to the worker: a send makes one attempt. TCP and TLS keep one connection
//! open and drop it on any error, so the next attempt reconnects. Honest limits:
//! - syslog has no acknowledgements. A write that succeeded only reached our socket buffer, so a
//!   message written just before the receiver died is lost, and a retry after a failure in the
//!   middle of a batch may repeat messages the receiver had in fact got. A connection the
//!   receiver closed while idle is noticed (and replaced) before writing, which avoids the most
//!   common loss: the first message after a receiver restart.
//! - UDP is fire and forget; only errors the kernel reports (an ICMP "port unreachable" from an
//!   earlier datagram) are seen. A message longer than a UDP datagram (65,507 bytes) is refused
//!   and dead-lettered rather than truncated: half a JSON document helps nobody.
//! - Receivers cap message size (rsyslog: 8 KiB unless `maxMessageSize` is raised); longer
//!   alerts are truncated there, not here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use korvid_common::settings::{SettingsError, require_non_empty};
use korvid_schemas::{Alert, AlertStatus, Severity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use super::worker::DeliverySettings;
use super::{
    Delivery, SendError, Shape, Sink, SinkError, rfc3339, severity_number, status_str, tactic_id,
};

/// Our structured-data ID (see the module docs about the enterprise number).
const SD_ID: &str = "korvid@32473";
/// The largest UDP payload over IPv4.
const UDP_MAX_BYTES: usize = 65_507;
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const MSGID_MAX: usize = 32;

/// How messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// One datagram per message (RFC 5426); no delivery guarantee.
    Udp,
    /// Octet-counted frames on a TCP connection (RFC 6587 §3.4.1).
    #[default]
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425).
    Tls,
}

/// What MSG holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    /// The alert as one line of JSON.
    #[default]
    Json,
    /// An ArcSight Common Event Format line ([`cef_line`]).
    Cef,
}

/// The syslog facility (RFC 5424 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)] // the names are the standard facility names
pub enum SyslogFacility {
    User,
    Daemon,
    Auth,
    /// Security/authorization messages, the usual home of security alerts.
    #[default]
    Authpriv,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    /// The facility's number.
    pub fn code(self) -> u8 {
        match self {
            SyslogFacility::User => 1,
            SyslogFacility::Daemon => 3,
            SyslogFacility::Auth => 4,
            SyslogFacility::Authpriv => 10,
            SyslogFacility::Local0 => 16,
            SyslogFacility::Local1 => 17,
            SyslogFacility::Local2 => 18,
            SyslogFacility::Local3 => 19,
            SyslogFacility::Local4 => 20,
            SyslogFacility::Local5 => 21,
            SyslogFacility::Local6 => 22,
            SyslogFacility::Local7 => 23,
        }
    }
}

/// A syslog receiver (`kind = "syslog"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSettings {
    /// Name used in routes, logs, metrics and dead letters.
    pub name: String,
    /// The receiver, `host:port` (`[v6addr]:port` for IPv6 literals).
    pub address: String,
    /// `udp`, `tcp` (default) or `tls`.
    #[serde(default)]
    pub transport: SyslogTransport,
    /// `json` (default) or `cef`.
    #[serde(default)]
    pub format: SyslogFormat,
    /// PEM CA bundle that verifies the receiver's certificate (`tls`); without it the system's
    /// trust store is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name to send (SNI) and verify in the receiver's certificate (`tls`); defaults to the host
    /// of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// HOSTNAME of each message; defaults to the alert's cluster.
    #[serde(default)]
    pub hostname: Option<String>,
    /// APP-NAME of each message.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// Facility (default `authpriv`).
    #[serde(default)]
    pub facility: SyslogFacility,
    /// Queue, rate, retries, breaker; `timeout_ms` bounds one send (connect, handshake, writes).
    #[serde(default)]
    pub delivery: DeliverySettings,
}

fn default_app_name() -> String {
    "korvid".into()
}

impl SyslogSettings {
    /// Checks the settings; `key` is the settings path of the sink.
    pub fn validate(&self, key: &str) -> Result<(), SettingsError> {
        let k = |f: &str| format!("{key}.{f}");
        require_non_empty(&k("name"), &self.name)?;
        let (host, _) = split_host_port(&self.address).ok_or_else(|| {
            SettingsError::invalid(k("address"), format!("`{}` is not host:port", self.address))
        })?;
        if self.transport != SyslogTransport::Tls {
            for (field, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("server_name", self.server_name.is_some()),
            ] {
                if set {
                    return Err(SettingsError::invalid(
                        k(field),
                        "is only used with transport = \"tls\"",
                    ));
                }
            }
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            return Err(SettingsError::invalid(
                k("ca_file"),
                format!("{} is not a readable file", ca.display()),
            ));
        }
        if self.transport == SyslogTransport::Tls {
            let name = self.server_name.as_deref().unwrap_or(host);
            if ServerName::try_from(name).is_err() {
                return Err(SettingsError::invalid(
                    k(if self.server_name.is_some() {
                        "server_name"
                    } else {
                        "address"
                    }),
                    format!("`{name}` is not a DNS name or IP address to verify"),
                ));
            }
        }
        if let Some(h) = &self.hostname {
            require_header_field(&k("hostname"), h, HOSTNAME_MAX)?;
        }
        require_header_field(&k("app_name"), &self.app_name, APP_NAME_MAX)?;
        self.delivery.validate(key)
    }
}

/// Refuses a header value that would not go out as configured.
fn require_header_field(key: &str, value: &str, max: usize) -> Result<(), SettingsError> {
    if value.is_empty() || value.len() > max || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SettingsError::invalid(
            key,
            format!("`{value}` must be 1 to {max} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

/// `host:port` → (`host`, port), brackets of an IPv6 literal removed.
fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

/// The syslog severity of an alert (RFC 5424 §6.2.1).
fn syslog_severity(a: &Alert) -> u8 {
    if a.status == AlertStatus::Resolved {
        return 6;
    }
    match a.severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    }
}

/// `<PRI>` as a number: facility * 8 + severity.
fn priority(facility: SyslogFacility, a: &Alert) -> u8 {
    facility.code() * 8 + syslog_severity(a)
}

/// A header field as RFC 5424 allows it: printable US-ASCII (anything else becomes `_`), at most
/// `max` characters, `-` (the NILVALUE) when empty.
fn header_field(value: &str, max: usize) -> String {
    let out: String = value
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() { "-".into() } else { out }
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_param_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Our structured-data element: the fields a receiver filters and correlates on.
fn structured_data(a: &Alert) -> String {
    let rule = a.rule_id.as_deref().or(a.model_version.as_deref());
    let params = [
        ("id", Some(a.id.as_str())),
        ("fingerprint", Some(a.fingerprint.as_str())),
        ("rule", rule),
        ("tactic", Some(tactic_id(a.tactic))),
        ("severity", Some(a.severity.as_str())),
        ("status", Some(status_str(a))),
    ];
    let mut out = format!("[{SD_ID}");
    for (name, value) in params {
        if let Some(v) = value {
            out.push_str(&format!(" {name}=\"{}\"", sd_param_value(v)));
        }
    }
    out.push(']');
    out
}

/// One alert as a full RFC 5424 message (no transport framing), MSG formatted as `settings`
/// says.
pub fn rfc5424_frame(a: &Alert, settings: &SyslogSettings) -> String {
    let msg = match settings.format {
        // An Alert has only string keys and serde_json writes NaN as null, so this cannot fail;
        // the fallback still names the alert.
        SyslogFormat::Json => serde_json::to_string(a).unwrap_or_else(|e| {
            serde_json::json!({ "id": a.id, "error": e.to_string() }).to_string()
        }),
        SyslogFormat::Cef => cef_line(a),
    };
    let msgid = match a.status {
        AlertStatus::Firing => "alert",
        AlertStatus::Resolved => "resolved",
    };
    format!(
        "<{pri}>1 {ts} {host} {app} - {msgid} {sd} {msg}",
        pri = priority(settings.facility, a),
        ts = rfc3339(a.event_time),
        host = header_field(
            settings.hostname.as_deref().unwrap_or(&a.cluster),
            HOSTNAME_MAX
        ),
        app = header_field(&settings.app_name, APP_NAME_MAX),
        msgid = header_field(msgid, MSGID_MAX),
        sd = structured_data(a),
    )
}

/// A CEF header field: `\` and `|` escaped, line breaks and other control characters as spaces.
fn cef_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A CEF extension value: `\` and `=` escaped, CR and LF as `\r` and `\n`, other control
/// characters as spaces.
fn cef_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An alert as an ArcSight CEF line:
/// `CEF:0|korvid|korvid|VERSION|RULE|TITLE|SEVERITY(0-10)|EXTENSIONS`.
///
/// Extensions use keys of the CEF dictionary: `rt`, `start`, `end` (ms), `cat` (tactic), `act`
/// (`firing`/`resolved`), `msg` (implication), `suser` (the `actor` or `user` evidence),
/// `dvchost` (cluster), `externalId` (alert id), and labelled custom fields for fingerprint,
/// subject, remediation, techniques, evidence, prevention, occurrences and score.
pub fn cef_line(a: &Alert) -> String {
    let signature = a
        .rule_id
        .as_deref()
        .or(a.model_version.as_deref())
        .unwrap_or("korvid");
    let mut line = format!(
        "CEF:0|korvid|korvid|{version}|{signature}|{title}|{severity}|",
        version = cef_header(env!("CARGO_PKG_VERSION")),
        signature = cef_header(signature),
        title = cef_header(&a.title),
        severity = severity_number(a),
    );
    let evidence = |name: &str| a.evidence.iter().find(|e| e.name == name);
    let actor = evidence("actor").or_else(|| evidence("user"));
    let evidence_text = a
        .evidence
        .iter()
        .map(|e| format!("{}={}", e.name, e.value))
        .collect::<Vec<_>>()
        .join("; ");
    let mut fields: Vec<(&str, String)> = vec![
        ("rt", a.event_time.to_string()),
        ("start", a.first_seen.to_string()),
        ("end", a.last_seen.to_string()),
        ("cat", a.tactic.display_name().to_string()),
        ("act", status_str(a).to_string()),
        ("externalId", a.id.clone()),
        ("dvchost", a.cluster.clone()),
        ("msg", a.implication.clone()),
    ];
    if let Some(actor) = actor {
        fields.push(("suser", actor.value.clone()));
    }
    let labelled: [(&str, &str, String); 6] = [
        ("cs1", "fingerprint", a.fingerprint.clone()),
        ("cs2", "subject", a.subject.to_string()),
        ("cs3", "remediation", a.remediation.clone()),
        ("cs4", "techniques", a.techniques.join(",")),
        ("cs5", "evidence", evidence_text),
        ("cs6", "prevention", a.prevention.clone()),
    ];
    for (key, label, value) in labelled {
        fields.push((key, value));
        fields.push((label_key(key), label.to_string()));
    }
    fields.push(("cn1", a.occurrences.to_string()));
    fields.push(("cn1Label", "occurrences".into()));
    fields.push(("cfp1", a.score.to_string()));
    fields.push(("cfp1Label", "score".into()));
    let extensions: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", cef_value(v)))
        .collect();
    line.push_str(&extensions.join(" "));
    line
}

/// The label key of a custom CEF field (`cs1` → `cs1Label`).
fn label_key(key: &str) -> &'static str {
    match key {
        "cs1" => "cs1Label",
        "cs2" => "cs2Label",
        "cs3" => "cs3Label",
        "cs4" => "cs4Label",
        "cs5" => "cs5Label",
        _ => "cs6Label",
    }
}

/// A byte stream to the receiver: plain TCP or TLS.
trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

enum Connection {
    Stream(Box<dyn ByteStream>),
    Datagram(UdpSocket),
}

impl Connection {
    /// Whether a kept connection still looks usable. Syslog receivers never send, so a stream
    /// that is readable was closed (EOF) or failed; reading also lets TLS consume the session
    /// tickets a TLS 1.3 server sends.
    fn is_open(&mut self) -> bool {
        match self {
            Connection::Datagram(_) => true,
            Connection::Stream(s) => {
                let mut buf = [0u8; 512];
                match s.read(&mut buf).now_or_never() {
                    None => true,
                    Some(Ok(n)) => n > 0,
                    Some(Err(_)) => false,
                }
            }
        }
    }

    async fn write(&mut self, msg: &str) -> Result<(), SendFailure> {
        match self {
            Connection::Stream(s) => {
                let frame = format!("{} {msg}", msg.len());
                s.write_all(frame.as_bytes())
                    .await
                    .map_err(|e| SendFailure::Retry(format!("write: {e}")))?;
                s.flush()
                    .await
                    .map_err(|e| SendFailure::Retry(format!("write: {e}")))
            }
            Connection::Datagram(u) => match u.send(msg.as_bytes()).await {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(90) => {
                    // EMSGSIZE: the route's limit is below ours; retrying will not shrink it.
                    Err(SendFailure::TooLarge(format!("send: {e}")))
                }
                Err(e) => Err(SendFailure::Retry(format!("send: {e}"))),
            },
        }
    }
}

/// Why writing one message failed.
enum SendFailure {
    /// The connection is gone or never came up.
    Retry(String),
    /// This message cannot go out this way.
    TooLarge(String),
}

/// The TLS pieces built once from the settings.
struct TlsTarget {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

/// Sends alerts to a syslog receiver; see the module docs.
pub struct SyslogSink {
    settings: SyslogSettings,
    tls: Option<TlsTarget>,
    timeout: Duration,
    /// The kept connection (TCP/TLS) or socket (UDP); `None` until the next send connects.
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl SyslogSink {
    /// A sink for one receiver. Reads the CA file for TLS; connects on the first send.
    pub fn new(settings: SyslogSettings) -> Result<Self, SinkError> {
        let fail = |reason: String| SinkError {
            sink: settings.name.clone(),
            reason,
        };
        let (host, _) = split_host_port(&settings.address)
            .ok_or_else(|| fail(format!("`{}` is not host:port", settings.address)))?;
        let tls = if settings.transport == SyslogTransport::Tls {
            let name = settings.server_name.as_deref().unwrap_or(host).to_string();
            let server_name = ServerName::try_from(name.clone())
                .map_err(|e| fail(format!("server name `{name}`: {e}")))?;
            let config = tls_config(settings.ca_file.as_ref()).map_err(fail)?;
            Some(TlsTarget {
                connector: TlsConnector::from(Arc::new(config)),
                server_name,
            })
        } else {
            None
        };
        Ok(SyslogSink {
            timeout: Duration::from_millis(settings.delivery.timeout_ms),
            settings,
            tls,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Connection, String> {
        let address = &self.settings.address;
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(address)
            .await
            .map_err(|e| format!("resolve {address}: {e}"))?
            .collect();
        let first = *addrs
            .first()
            .ok_or_else(|| format!("resolve {address}: no addresses"))?;
        if self.settings.transport == SyslogTransport::Udp {
            let local = if first.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local)
                .await
                .map_err(|e| format!("bind UDP socket: {e}"))?;
            socket
                .connect(first)
                .await
                .map_err(|e| format!("connect UDP {first}: {e}"))?;
            return Ok(Connection::Datagram(socket));
        }
        let mut last = String::new();
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connect {addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        // Alerts are few and small; do not let Nagle hold the last one back.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Connection::Stream(Box::new(tcp))),
            Some(t) => {
                let stream = t
                    .connector
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {address}: {e}"))?;
                Ok(Connection::Stream(Box::new(stream)))
            }
        }
    }

    /// Writes `frames` in order on the kept connection, counting those written in `written`.
    async fn write_frames(
        &self,
        slot: &mut Option<Connection>,
        frames: &[(usize, String)],
        written: &mut usize,
    ) -> Result<(), SendFailure> {
        if slot.as_mut().is_some_and(|c| !c.is_open()) {
            tracing::debug!(sink = %self.settings.name, "syslog connection closed by the receiver; reconnecting");
            *slot = None;
        }
        let connection = match slot {
            Some(c) => c,
            None => slot.insert(self.connect().await.map_err(SendFailure::Retry)?),
        };
        for (_, msg) in frames {
            connection.write(msg).await?;
            *written += 1;
        }
        Ok(())
    }
}

/// A rustls client configuration trusting `ca_file`, else the platform's trust store.
fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, String> {
    korvid_common::install_tls_provider();
    let builder = rustls::ClientConfig::builder();
    let Some(ca) = ca_file else {
        use rustls_platform_verifier::BuilderVerifierExt;
        return builder
            .with_platform_verifier()
            .map(|b| b.with_no_client_auth())
            .map_err(|e| format!("system trust store: {e}"));
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file {}: no certificate in it", ca.display()));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

#[async_trait::async_trait]
impl Sink for SyslogSink {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn shape(&self) -> Shape {
        Shape::PerAlert
    }

    fn max_batch(&self) -> usize {
        100
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SendError> {
        let mut refused = Vec::new();
        let mut refusal = String::new();
        let mut frames = Vec::with_capacity(delivery.alerts.len());
        for (i, alert) in delivery.alerts.iter().enumerate() {
            let msg = rfc5424_frame(alert, &self.settings);
            if self.settings.transport == SyslogTransport::Udp && msg.len() > UDP_MAX_BYTES {
                tracing::warn!(sink = %self.settings.name, alert = %alert.id, bytes = msg.len(), "alert too large for a UDP datagram; refused");
                refusal = format!(
                    "alert {} is {} bytes, more than a UDP datagram holds ({UDP_MAX_BYTES}); use tcp or tls",
                    alert.id,
                    msg.len()
                );
                refused.push(i);
                continue;
            }
            frames.push((i, msg));
        }

        let mut written = 0;
        let failure = if frames.is_empty() {
            None
        } else {
            let mut slot = self.connection.lock().await;
            let result = tokio::time::timeout(
                self.timeout,
                self.write_frames(&mut slot, &frames, &mut written),
            )
            .await;
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(f)) => Some(f),
                Err(_) => Some(SendFailure::Retry(format!(
                    "no progress within {} ms",
                    self.timeout.as_millis()
                ))),
            };
            if failure.is_some() {
                // Whatever state the connection is in, the next attempt starts afresh.
                *slot = None;
            }
            failure
        };

        let address = &self.settings.address;
        let mut retry = Vec::new();
        let mut reason = refusal;
        match failure {
            None => {}
            Some(SendFailure::TooLarge(e)) => {
                // Only the message at `written` is too large; the rest may go on a retry.
                refused.push(frames[written].0);
                retry.extend(frames[written + 1..].iter().map(|(i, _)| *i));
                reason = format!("{address}: {e}");
            }
            Some(SendFailure::Retry(e)) => {
                retry.extend(frames[written..].iter().map(|(i, _)| *i));
                reason = format!("{address}: {e}");
            }
        }
        refused.sort_unstable();
        match (retry.is_empty(), refused.is_empty()) {
            (true, true) => Ok(()),
            (false, true) if written == 0 => Err(SendError::retry(reason)),
            (true, false) if refused.len() == delivery.alerts.len() => {
                Err(SendError::refused(reason))
            }
            _ => Err(SendError::Partial {
                reason,
                retry,
                refused,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use korvid_schemas::{Detector, Evidence, Subject, Tactic};

    fn alert() -> Alert {
        Alert {
            cluster: "prod-eu".into(),
            event_time: 1_764_000_000_123,
            id: "fp1-1764000000000".into(),
            fingerprint: "fp1".into(),
            status: AlertStatus::Firing,
            title: "Shell in pod".into(),
            tactic: Tactic::Execution,
            techniques: vec!["T1609".into(), "T1059".into()],
            severity: Severity::High,
            subject: Subject {
                kind: "Pod".into(),
                namespace: Some("web".into()),
                name: "api-0".into(),
                uid: None,
            },
            detector: Detector::Rule,
            rule_id: Some("exec-into-pod".into()),
            model_version: None,
            score: 0.9,
            finding_ids: vec!["f1".into()],
            occurrences: 3,
            first_seen: 1_764_000_000_000,
            last_seen: 1_764_000_000_100,
            evidence: vec![Evidence {
                name: "actor".into(),
                value: "alice".into(),
            }],
            implication: "Someone runs commands in a production pod.".into(),
            remediation: "Check who ran kubectl exec.".into(),
            prevention: "Deny pods/exec.".into(),
            references: vec![],
        }
    }

    fn settings(json: serde_json::Value) -> SyslogSettings {
        serde_json::from_value(json).expect("settings")
    }

    /// Splits a CEF line at unescaped `|` (header) and returns the header fields.
    fn cef_header_fields(line: &str) -> Vec<String> {
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next()
                        && let Some(last) = fields.last_mut()
                    {
                        last.push(n);
                    }
                }
                '|' if fields.len() < 8 => fields.push(String::new()),
                c => {
                    if let Some(last) = fields.last_mut() {
                        last.push(c);
                    }
                }
            }
        }
        fields
    }

    #[test]
    fn cef_header_escapes_pipes_and_backslashes_and_drops_line_breaks() {
        let mut a = alert();
        a.title = "a|b\\c\nd".into();
        a.rule_id = Some("r|1".into());
        let line = cef_line(&a);
        assert!(
            line.starts_with(&format!(
                "CEF:0|korvid|korvid|{}|r\\|1|a\\|b\\\\c d|8|rt=",
                env!("CARGO_PKG_VERSION")
            )),
            "{line}"
        );
        let fields = cef_header_fields(&line);
        assert_eq!(fields.len(), 8, "{fields:?}");
        assert_eq!(fields[4], "r|1");
        assert_eq!(fields[5], "a|b\\c d");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn cef_extension_values_escape_equals_backslashes_and_newlines() {
        let mut a = alert();
        a.implication = "x=1 \\ y\r\nz|w".into();
        a.evidence = vec![Evidence {
            name: "user".into(),
            value: "bob=admin".into(),
        }];
        let line = cef_line(&a);
        assert!(line.contains(" msg=x\\=1 \\\\ y\\r\\nz|w "), "{line}");
        assert!(line.contains(" suser=bob\\=admin "), "{line}");
        assert!(
            line.contains(" cs5=user\\=bob\\=admin cs5Label=evidence "),
            "{line}"
        );
        assert!(!line.contains('\n') && !line.contains('\r'));
    }

    #[test]
    fn cef_extensions_use_dictionary_keys() {
        let line = cef_line(&alert());
        for part in [
            "rt=1764000000123",
            "cat=Execution",
            "act=firing",
            "suser=alice",
            "dvchost=prod-eu",
            "externalId=fp1-1764000000000",
            "cs1=fp1 cs1Label=fingerprint",
            "cs2=Pod/web/api-0 cs2Label=subject",
            "cs4=T1609,T1059 cs4Label=techniques",
            "cn1=3 cn1Label=occurrences",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        let extensions = line.splitn(8, '|').nth(7).expect("extensions");
        // No value of this alert holds `=`, so every `=` ends a key.
        let keys: Vec<&str> = extensions
            .split(' ')
            .filter_map(|token| token.split_once('=').map(|(k, _)| k))
            .collect();
        assert_eq!(
            keys,
            [
                "rt",
                "start",
                "end",
                "cat",
                "act",
                "externalId",
                "dvchost",
                "msg",
                "suser",
                "cs1",
                "cs1Label",
                "cs2",
                "cs2Label",
                "cs3",
                "cs3Label",
                "cs4",
                "cs4Label",
                "cs5",
                "cs5Label",
                "cs6",
                "cs6Label",
                "cn1",
                "cn1Label",
                "cfp1",
                "cfp1Label"
            ]
        );
    }

    #[test]
    fn pri_is_facility_times_eight_plus_severity() {
        let mut a = alert();
        let cases = [
            (Severity::Critical, 2),
            (Severity::High, 3),
            (Severity::Medium, 4),
            (Severity::Low, 5),
        ];
        for (severity, expected) in cases {
            a.severity = severity;
            assert_eq!(priority(SyslogFacility::Authpriv, &a), 80 + expected);
            assert_eq!(priority(SyslogFacility::Local7, &a), 184 + expected);
            assert_eq!(priority(SyslogFacility::User, &a), 8 + expected);
        }
        a.status = AlertStatus::Resolved;
        a.severity = Severity::Critical;
        assert_eq!(priority(SyslogFacility::Auth, &a), 32 + 6);
    }

    #[test]
    fn sd_param_values_escape_quote_backslash_and_bracket() {
        assert_eq!(sd_param_value(r#"a"b\c]d[e="#), r#"a\"b\\c\]d[e="#);
        let mut a = alert();
        a.rule_id = Some("r\"]".into());
        assert_eq!(
            structured_data(&a),
            "[korvid@32473 id=\"fp1-1764000000000\" fingerprint=\"fp1\" rule=\"r\\\"\\]\" \
             tactic=\"TA0002\" severity=\"high\" status=\"firing\"]"
        );
    }

    #[test]
    fn header_fields_are_printable_ascii_capped_and_never_empty() {
        assert_eq!(header_field("prod eu\tä", 255), "prod_eu__");
        assert_eq!(header_field("", 48), "-");
        assert_eq!(header_field(&"x".repeat(300), HOSTNAME_MAX).len(), 255);
        assert_eq!(header_field(&"y".repeat(60), APP_NAME_MAX).len(), 48);
    }

    #[test]
    fn frames_a_complete_rfc5424_message() {
        let s = settings(serde_json::json!({"name": "siem", "address": "127.0.0.1:6514"}));
        let mut a = alert();
        a.cluster = "prod eu".into();
        let frame = rfc5424_frame(&a, &s);
        let prefix = "<83>1 2025-11-24T16:00:00.123Z prod_eu korvid - alert [korvid@32473 ";
        assert!(frame.starts_with(prefix), "{frame}");
        let json = frame.split_once("] ").expect("msg").1;
        let back: Alert = serde_json::from_str(json).expect("MSG is the alert as JSON");
        assert_eq!(back, a);

        a.status = AlertStatus::Resolved;
        let s = settings(serde_json::json!({
            "name": "siem", "address": "h:514", "format": "cef", "facility": "local4",
            "hostname": "korvid-1", "app_name": "kv"
        }));
        let frame = rfc5424_frame(&a, &s);
        assert!(
            frame.starts_with("<166>1 2025-11-24T16:00:00.123Z korvid-1 kv - resolved ["),
            "{frame}"
        );
        assert!(frame.contains("] CEF:0|korvid|"), "{frame}");
    }

    #[test]
    fn settings_validate_names_the_bad_key() {
        let bad = |json: serde_json::Value, key: &str| {
            let err = settings(json)
                .validate("notify.sinks[0]")
                .expect_err("invalid");
            assert!(err.to_string().contains(key), "{err} should name {key}");
        };
        bad(
            serde_json::json!({"name": "s", "address": "nohost"}),
            "notify.sinks[0].address",
        );
        bad(
            serde_json::json!({"name": "s", "address": "::1:514"}),
            "notify.sinks[0].address",
        );
        bad(
            serde_json::json!({"name": "s", "address": "h:514", "ca_file": "/x.pem"}),
            "notify.sinks[0].ca_file",
        );
        bad(
            serde_json::json!({"name": "s", "address": "h:514", "transport": "tls", "ca_file": "/nonexistent.pem"}),
            "notify.sinks[0].ca_file",
        );
        bad(
            serde_json::json!({"name": "s", "address": "h:514", "app_name": "a b"}),
            "notify.sinks[0].app_name",
        );
        bad(
            serde_json::json!({"name": "s", "address": "h:514", "delivery": {"timeout_ms": 1}}),
            "notify.sinks[0].delivery.timeout_ms",
        );
        assert!(
            serde_json::from_value::<SyslogSettings>(
                serde_json::json!({"name": "s", "address": "h:514", "port": 1})
            )
            .is_err(),
            "unknown keys are refused"
        );
        let ok =
            settings(serde_json::json!({"name": "s", "address": "[::1]:6514", "transport": "tls"}));
        ok.validate("k").expect("valid");
        assert_eq!(ok.format, SyslogFormat::Json);
        assert_eq!(ok.facility, SyslogFacility::Authpriv);
        assert_eq!(split_host_port("[::1]:6514"), Some(("::1", 6514)));
    }

    #[tokio::test]
    async fn udp_refuses_an_alert_larger_than_a_datagram_and_sends_the_rest() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let address = receiver.local_addr().expect("addr").to_string();
        let sink = SyslogSink::new(settings(
            serde_json::json!({"name": "s", "address": address, "transport": "udp"}),
        ))
        .expect("sink");
        let mut big = alert();
        big.implication = "x".repeat(70_000);
        let delivery = Delivery {
            group: "g".into(),
            alerts: vec![big, alert()],
        };
        match sink.send(&delivery).await {
            Err(SendError::Partial { retry, refused, .. }) => {
                assert!(retry.is_empty());
                assert_eq!(refused, vec![0]);
            }
            other => panic!("expected a partial refusal, got {other:?}"),
        }
        let mut buf = vec![0u8; 70_000];
        let n = receiver.recv(&mut buf).await.expect("datagram");
        assert!(buf[..n].starts_with(b"<83>1 "));
    }

    #[tokio::test]
    async fn tcp_connection_refused_is_retryable_and_a_closed_connection_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let sink = SyslogSink::new(settings(
            serde_json::json!({"name": "s", "address": address}),
        ))
        .expect("sink");
        let delivery = Delivery {
            group: "g".into(),
            alerts: vec![alert()],
        };

        // First connection: read one frame, then close it as a restarting receiver would.
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.expect("read");
            drop(s);
            (listener, String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        sink.send(&delivery).await.expect("first send");
        let (listener, first) = accept.await.expect("join");
        let (len, msg) = first.split_once(' ').expect("octet count");
        assert_eq!(len.parse::<usize>().expect("length"), msg.len());
        tokio::time::sleep(Duration::from_millis(50)).await;

        // The closed connection is noticed before writing: the message goes on a new one.
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.expect("read");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        sink.send(&delivery).await.expect("second send");
        // Written to the dead connection instead, the message would never be accepted here.
        let second = tokio::time::timeout(Duration::from_secs(5), accept)
            .await
            .expect("the second message arrives on a new connection")
            .expect("join");
        assert_eq!(second, first);

        // Nobody listening: retryable.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let sink = SyslogSink::new(settings(
            serde_json::json!({"name": "s", "address": address}),
        ))
        .expect("sink");
        assert!(matches!(
            sink.send(&delivery).await,
            Err(SendError::Retryable { .. })
        ));
    }
}
