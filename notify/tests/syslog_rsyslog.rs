//! The syslog sink against the real rsyslog (Debian's `rsyslog` and `rsyslog-gnutls`, installed
//! by `make setup`): JSON over TCP, CEF over TLS with a verified certificate, JSON over UDP.
//!
//! rsyslogd runs unprivileged-style as a child with its own configuration, work directory and
//! loopback ports, and no system inputs, so it neither needs nor touches the system's syslog.
//! It writes what it *parsed* (RFC 5424 header fields, structured data decoded by mmpstrucdata,
//! MSG) as one JSON object per line, which the test reads back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use korvid_notify::sinks::{Delivery, SendError, Sink, SyslogSink, cef_line};
use korvid_schemas::{Alert, AlertStatus, Detector, Evidence, Severity, Subject, Tactic};
use serde_json::{Value, json};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const WAIT: Duration = Duration::from_secs(20);

fn alert(id: &str, severity: Severity) -> Alert {
    Alert {
        cluster: "prod-eu".into(),
        event_time: 1_764_000_000_123,
        id: id.into(),
        fingerprint: format!("fp-{id}"),
        status: AlertStatus::Firing,
        title: "Shell in pod".into(),
        tactic: Tactic::Execution,
        techniques: vec!["T1609".into()],
        severity,
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
        occurrences: 2,
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

/// An alert whose text needs every kind of escaping CEF and RFC 5424 have.
fn nasty_alert() -> Alert {
    let mut a = alert("nasty-1", Severity::Critical);
    a.title = "pipe | eq = back \\ new\nline".into();
    a.rule_id = Some("rule|\"quoted\"]\\".into());
    a.evidence = vec![
        Evidence {
            name: "user".into(),
            value: "bob=root|x\\y".into(),
        },
        Evidence {
            name: "command".into(),
            value: "sh -c 'a=1\nb=2'".into(),
        },
    ];
    a.implication = "line one\r\nline two = bad | worse \\ end".into();
    a
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free udp port")
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free tcp port")
            .port()
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files; returns the CA path.
fn pki(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("server cert");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).expect("write");
    dir.join("ca.pem")
}

struct Rsyslog {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    tcp: u16,
    tls: u16,
    udp: u16,
}

impl Rsyslog {
    async fn start() -> Rsyslog {
        assert!(
            Path::new(RSYSLOGD).is_file(),
            "{RSYSLOGD} is missing: run `make setup` (installs the rsyslog and rsyslog-gnutls packages)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("work")).expect("workdir");
        pki(d);
        let (tcp, tls, udp) = (free_port(false), free_port(false), free_port(true));
        let p = |name: &str| d.join(name).display().to_string();
        // Every input goes to one ruleset that records the parsed fields as a JSON object.
        let conf = format!(
            r#"global(
  workDirectory="{work}"
  maxMessageSize="64k"
  net.enableDNS="off"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" maxSessions="16")
module(load="imudp")
module(load="mmpstrucdata")
template(name="timestamp" type="string" string="%timereported:::date-rfc3339%")
template(name="record" type="string" string="%$!%\n")
ruleset(name="received") {{
  action(type="mmpstrucdata" sd_name.lowercase="off")
  set $!input = $inputname;
  set $!pri = $pri;
  set $!timestamp = exec_template("timestamp");
  set $!hostname = $hostname;
  set $!appname = $app-name;
  set $!procid = $procid;
  set $!msgid = $msgid;
  set $!msg = $msg;
  action(type="omfile" file="{out}" template="record")
}}
input(type="imtcp" name="tcp" address="127.0.0.1" port="{tcp}" ruleset="received")
input(type="imtcp" name="tls" address="127.0.0.1" port="{tls}" ruleset="received"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imudp" name="udp" address="127.0.0.1" port="{udp}" ruleset="received")
"#,
            work = p("work"),
            ca = p("ca.pem"),
            cert = p("server.pem"),
            key = p("server-key.pem"),
            out = p("received.jsonl"),
        );
        std::fs::write(d.join("rsyslog.conf"), conf).expect("write conf");
        let child = tokio::process::Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(d.join("stdout.log")).expect("stdout"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(d.join("stderr.log")).expect("stderr"),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("start rsyslogd");
        let mut rsyslog = Rsyslog {
            child,
            dir,
            tcp,
            tls,
            udp,
        };
        rsyslog.wait_listening().await;
        rsyslog
    }

    /// Waits until both TCP listeners accept (UDP cannot be probed; it is bound at the same time).
    async fn wait_listening(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        for port in [self.tcp, self.tls] {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("rsyslogd exited ({status}): {}", self.logs());
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "rsyslogd did not listen on {port}: {}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "\n--- rsyslogd stderr ---\n{}\n--- stdout ---\n{}",
            read("stderr.log"),
            read("stdout.log")
        )
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The records rsyslog wrote so far.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("rsyslog record {l}: {e}")))
            .collect()
    }

    /// Waits for the record of `input` whose structured data carries alert `id`.
    async fn wait_for(&self, input: &str, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self
                .records()
                .into_iter()
                .find(|r| r["input"] == input && r["rfc5424-sd"]["korvid@32473"]["id"] == id)
            {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message for alert {id} on {input} within {WAIT:?}; received: {:?}{}",
                self.records(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sink(settings: Value) -> SyslogSink {
    SyslogSink::new(serde_json::from_value(settings).expect("settings")).expect("sink")
}

async fn send(sink: &SyslogSink, alerts: Vec<Alert>) {
    let delivery = Delivery {
        group: "cluster=prod-eu".into(),
        alerts,
    };
    if let Err(e) = sink.send(&delivery).await {
        panic!("send: {e:?}");
    }
}

/// Undoes CEF escaping: splits a line into its 7 header fields and its extensions by key.
fn parse_cef(line: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut header = vec![String::new()];
    let mut rest = line;
    let mut chars = line.char_indices();
    while header.len() < 8 {
        let Some((i, c)) = chars.next() else { break };
        let field = header.last_mut().expect("field");
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    field.push(n);
                }
            }
            '|' => {
                header.push(String::new());
                rest = &line[i + 1..];
            }
            c => field.push(c),
        }
    }
    header.pop();
    // Extensions: `key=value` pairs; a key starts after a space and ends at an unescaped `=`.
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => current.push('\n'),
                Some('r') => current.push('\r'),
                Some(n) => current.push(n),
                None => {}
            },
            '=' => {
                // The text after the last space is the next key; before it, the previous value.
                let (value, key) = match current.rfind(' ') {
                    Some(i) if !pairs.is_empty() => {
                        (current[..i].to_string(), current[i + 1..].to_string())
                    }
                    _ => (String::new(), current.clone()),
                };
                if let Some(last) = pairs.last_mut() {
                    last.1 = value;
                }
                pairs.push((key, String::new()));
                current.clear();
            }
            c => current.push(c),
        }
    }
    if let Some(last) = pairs.last_mut() {
        last.1 = current;
    }
    (header, pairs)
}

fn ext<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("CEF key {key} missing in {pairs:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_parses_json_over_tcp_cef_over_tls_and_json_over_udp() {
    let rsyslog = Rsyslog::start().await;

    // JSON over TCP, two alerts in one send and a resolved one after.
    let tcp = sink(json!({
        "name": "siem-tcp",
        "address": format!("127.0.0.1:{}", rsyslog.tcp),
        "transport": "tcp",
        "facility": "local4",
    }));
    let first = alert("tcp-1", Severity::High);
    let mut resolved = alert("tcp-2", Severity::Low);
    resolved.status = AlertStatus::Resolved;
    send(&tcp, vec![first.clone(), nasty_alert()]).await;
    send(&tcp, vec![resolved.clone()]).await;

    let r = rsyslog.wait_for("tcp", "tcp-1").await;
    assert_eq!(r["pri"], "163", "local4 (20) * 8 + err (3): {r}");
    assert_eq!(r["hostname"], "prod-eu");
    assert_eq!(r["appname"], "korvid");
    assert_eq!(r["procid"], "-");
    assert_eq!(r["msgid"], "alert");
    assert_eq!(r["timestamp"], "2025-11-24T16:00:00.123Z", "{r}");
    let sd = &r["rfc5424-sd"]["korvid@32473"];
    assert_eq!(sd["fingerprint"], "fp-tcp-1");
    assert_eq!(sd["rule"], "exec-into-pod");
    assert_eq!(sd["tactic"], "TA0002");
    assert_eq!(sd["severity"], "high");
    assert_eq!(sd["status"], "firing");
    let msg = r["msg"].as_str().expect("msg");
    let back: Alert = serde_json::from_str(msg).unwrap_or_else(|e| panic!("MSG {msg}: {e}"));
    assert_eq!(back, first, "MSG is the alert, unchanged");

    // The escaped structured-data value comes back as sent; the JSON keeps the newline.
    let r = rsyslog.wait_for("tcp", "nasty-1").await;
    assert_eq!(
        r["rfc5424-sd"]["korvid@32473"]["rule"], "rule|\"quoted\"]\\",
        "{r}"
    );
    let back: Alert = serde_json::from_str(r["msg"].as_str().expect("msg")).expect("json");
    assert_eq!(back, nasty_alert());

    let r = rsyslog.wait_for("tcp", "tcp-2").await;
    assert_eq!(r["pri"], "166", "a resolved alert is info (6): {r}");
    assert_eq!(r["msgid"], "resolved");

    // CEF over TLS, the receiver's certificate verified against our CA (name = 127.0.0.1).
    let tls = sink(json!({
        "name": "siem-tls",
        "address": format!("127.0.0.1:{}", rsyslog.tls),
        "transport": "tls",
        "format": "cef",
        "ca_file": rsyslog.ca_file(),
        "hostname": "korvid-notify-0",
        "app_name": "korvid-test",
    }));
    let nasty = nasty_alert();
    send(&tls, vec![nasty.clone(), alert("tls-2", Severity::Medium)]).await;
    let r = rsyslog.wait_for("tls", "nasty-1").await;
    assert_eq!(r["pri"], "82", "authpriv (10) * 8 + crit (2): {r}");
    assert_eq!(r["hostname"], "korvid-notify-0");
    assert_eq!(r["appname"], "korvid-test");
    let line = r["msg"].as_str().expect("msg");
    assert_eq!(line, cef_line(&nasty), "rsyslog kept the CEF line as sent");
    let (header, pairs) = parse_cef(line);
    assert_eq!(
        header,
        vec![
            "CEF:0",
            "korvid",
            "korvid",
            env!("CARGO_PKG_VERSION"),
            "rule|\"quoted\"]\\",
            "pipe | eq = back \\ new line",
            "10",
        ],
        "{line}"
    );
    assert_eq!(ext(&pairs, "msg"), nasty.implication);
    assert_eq!(ext(&pairs, "suser"), "bob=root|x\\y");
    assert_eq!(
        ext(&pairs, "cs5"),
        "user=bob=root|x\\y; command=sh -c 'a=1\nb=2'"
    );
    assert_eq!(ext(&pairs, "cs5Label"), "evidence");
    assert_eq!(ext(&pairs, "externalId"), "nasty-1");
    assert_eq!(ext(&pairs, "rt"), "1764000000123");
    assert_eq!(ext(&pairs, "act"), "firing");
    assert!(
        pairs
            .iter()
            .all(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric())),
        "CEF keys are alphanumeric: {pairs:?}"
    );
    rsyslog.wait_for("tls", "tls-2").await;

    // UDP: one datagram per alert.
    let udp = sink(json!({
        "name": "siem-udp",
        "address": format!("127.0.0.1:{}", rsyslog.udp),
        "transport": "udp",
    }));
    // imudp may bind a moment after imtcp listens, and a datagram sent before is lost without
    // an error: send until one arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !rsyslog
        .records()
        .iter()
        .any(|r| r["input"] == "udp" && r["rfc5424-sd"]["korvid@32473"]["id"] == "udp-1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no UDP message arrived{}",
            rsyslog.logs()
        );
        send(&udp, vec![alert("udp-1", Severity::Low)]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = rsyslog.wait_for("udp", "udp-1").await;
    assert_eq!(r["pri"], "85", "authpriv (10) * 8 + notice (5): {r}");
    let back: Alert = serde_json::from_str(r["msg"].as_str().expect("msg")).expect("json");
    assert_eq!(back.id, "udp-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_ca_did_not_sign_fails_the_handshake_and_is_retryable() {
    let rsyslog = Rsyslog::start().await;
    let other = tempfile::tempdir().expect("tempdir");
    let stranger_ca = pki(other.path());
    let tls = sink(json!({
        "name": "siem-tls",
        "address": format!("127.0.0.1:{}", rsyslog.tls),
        "transport": "tls",
        "ca_file": stranger_ca,
    }));
    let delivery = Delivery {
        group: "g".into(),
        alerts: vec![alert("never", Severity::High)],
    };
    match tls.send(&delivery).await {
        Err(SendError::Retryable { reason, .. }) => {
            assert!(reason.contains("TLS handshake"), "{reason}")
        }
        other => panic!("expected a retryable handshake failure, got {other:?}"),
    }
    // The right CA on the same receiver works, so the failure above was the verification.
    let trusted = sink(json!({
        "name": "siem-tls",
        "address": format!("127.0.0.1:{}", rsyslog.tls),
        "transport": "tls",
        "server_name": "localhost",
        "ca_file": rsyslog.ca_file(),
    }));
    send(&trusted, vec![alert("trusted-1", Severity::High)]).await;
    rsyslog.wait_for("tls", "trusted-1").await;
    assert!(
        rsyslog
            .records()
            .iter()
            .all(|r| r["rfc5424-sd"]["korvid@32473"]["id"] != "never")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_receiver_gets_the_next_alert_on_a_new_connection() {
    let mut rsyslog = Rsyslog::start().await;
    let tcp = sink(json!({
        "name": "siem-tcp",
        "address": format!("127.0.0.1:{}", rsyslog.tcp),
    }));
    send(&tcp, vec![alert("before-restart", Severity::High)]).await;
    rsyslog.wait_for("tcp", "before-restart").await;

    // Stop rsyslogd: the kept connection dies; while it is down a send is retryable.
    rsyslog.child.kill().await.expect("kill rsyslogd");
    let down = Delivery {
        group: "g".into(),
        alerts: vec![alert("while-down", Severity::High)],
    };
    match tcp.send(&down).await {
        Err(SendError::Retryable { .. }) => {}
        other => panic!("expected retryable while the receiver is down, got {other:?}"),
    }

    // Same ports, same configuration: the sink reconnects on its own.
    let conf = rsyslog.dir.path().join("rsyslog.conf");
    rsyslog.child = tokio::process::Command::new(RSYSLOGD)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(rsyslog.dir.path().join("rsyslogd2.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(rsyslog.dir.path().join("stderr.log")).expect("stderr"),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("restart rsyslogd");
    rsyslog.wait_listening().await;
    send(&tcp, vec![alert("after-restart", Severity::High)]).await;
    rsyslog.wait_for("tcp", "after-restart").await;
}
