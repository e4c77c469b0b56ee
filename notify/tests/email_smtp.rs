//! The email sink against a real SMTP server on loopback: CPython's standard-library `smtpd`
//! (Python 3.11, as on the CI machines), which prints every message it receives.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use korvid_notify::sinks::worker::{DeliverySettings, SinkMetrics, spawn};
use korvid_notify::sinks::{Delivery, EmailSettings, EmailSink, SendError, Sink, SmtpSecurity};
use korvid_schemas::*;
use tokio::sync::mpsc;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct SmtpServer {
    child: Child,
    port: u16,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-u",
                "-m",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs (make setup installs it on CI machines)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "python3 -m smtpd did not listen (Python 3.11's standard library has it)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer { child, port }
    }

    /// Stops the server and returns everything it printed.
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        out
    }
}

/// The message as sent: DebuggingServer prints each line as a Python bytes literal; header
/// lines folded per RFC 5322 (a continuation starts with a space) are joined back.
fn unfold(printed: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut in_headers = true;
    for raw in printed.lines() {
        let line = raw
            .strip_prefix("b'")
            .and_then(|l| l.strip_suffix('\''))
            .or_else(|| raw.strip_prefix("b\"").and_then(|l| l.strip_suffix('"')))
            .unwrap_or(raw);
        if line.is_empty() {
            in_headers = false;
        }
        if line.contains("MESSAGE FOLLOWS") {
            in_headers = true;
        }
        match lines.last_mut() {
            Some(prev) if in_headers && line.starts_with(' ') => prev.push_str(line),
            _ => lines.push(line.to_string()),
        }
    }
    lines.join("\n")
}

fn alert(n: usize, status: AlertStatus) -> Alert {
    Alert {
        cluster: "prod".into(),
        event_time: 1_790_000_000_000,
        id: format!("fp{n}-1790000000000"),
        fingerprint: format!("fp{n}"),
        status,
        title: format!("Shell in pod web-{n}"),
        tactic: Tactic::Execution,
        techniques: vec!["T1609".into()],
        severity: Severity::High,
        subject: Subject {
            kind: "Pod".into(),
            namespace: Some("shop".into()),
            name: format!("web-{n}"),
            uid: None,
        },
        detector: Detector::Rule,
        rule_id: Some("KOR-0003".into()),
        model_version: None,
        score: 1.0,
        finding_ids: vec![],
        occurrences: 2,
        first_seen: 1_790_000_000_000,
        last_seen: 1_790_000_000_000,
        evidence: vec![Evidence {
            name: "actor".into(),
            value: "mallory".into(),
        }],
        implication: "Someone has a shell in a workload.".into(),
        remediation: "Revoke pods/exec from the actor.".into(),
        prevention: "Grant pods/exec only through break-glass roles.".into(),
        references: vec![],
    }
}

fn settings(port: u16) -> EmailSettings {
    EmailSettings {
        name: "mail".into(),
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        from: "korvid <korvid@example.com>".into(),
        to: vec!["secops@example.com".into(), "oncall@example.com".into()],
        ca_file: None,
        delivery: DeliverySettings {
            initial_backoff_ms: 50,
            max_backoff_ms: 200,
            give_up_after_ms: 10_000,
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn a_group_arrives_as_one_email_with_the_explanations() {
    let server = SmtpServer::start();
    let s = settings(server.port);
    let sink = Arc::new(EmailSink::new(&s).expect("sink"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_hurry, hurry_rx) = tokio::sync::watch::channel(false);
    let (handle, join) = spawn(
        sink,
        s.delivery.clone(),
        SinkMetrics::default(),
        tx,
        hurry_rx,
    );
    handle.offer(Delivery {
        group: "cluster=prod,subject=Pod/shop/web-1".into(),
        alerts: vec![
            alert(1, AlertStatus::Firing),
            alert(2, AlertStatus::Resolved),
        ],
    });
    drop(handle);
    tokio::time::timeout(Duration::from_secs(20), join)
        .await
        .expect("delivered in time")
        .expect("worker");
    assert!(rx.try_recv().is_err(), "nothing dead-lettered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let printed = unfold(&server.finish());
    assert_eq!(
        printed.matches("MESSAGE FOLLOWS").count(),
        1,
        "one email for the group:\n{printed}"
    );
    for want in [
        "Subject: [korvid high] 1 firing, 1 resolved in cluster=prod,subject=Pod/shop/web-1",
        "From: korvid <korvid@example.com>",
        "To: secops@example.com, oncall@example.com",
        "alert id:    fp1-1790000000000",
        "[HIGH, RESOLVED] Shell in pod web-2",
        "why:         Someone has a shell in a workload.",
        "fix:         Revoke pods/exec from the actor.",
        "prevent:     Grant pods/exec only through break-glass roles.",
        "actor: mallory",
    ] {
        assert!(printed.contains(want), "missing `{want}` in:\n{printed}");
    }
}

#[tokio::test]
async fn a_relay_that_is_down_is_worth_a_retry() {
    let port = free_port();
    let sink = EmailSink::new(&settings(port)).expect("sink");
    let d = Delivery {
        group: "g".into(),
        alerts: vec![alert(1, AlertStatus::Firing)],
    };
    match sink.send(&d).await {
        Err(SendError::Retryable { .. }) => {}
        other => panic!("expected a retryable error, got {other:?}"),
    }
}
