//! End to end on a real Kafka-protocol broker: `korvid up` starts its embedded broker (tansu),
//! audit events go in through the webhook, alerts come out at a real HTTP receiver.

mod support;

use std::time::{Duration, Instant};

use korvid_schemas::{DeadLetter, Decoder};
use support::*;

const ALERT_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_a_pod_alerts_exactly_once() {
    let s = stack().await;
    let (cfg, receiver) = (&s.cfg, &s.receiver);
    let client = http();

    let batch = exec_batch("e2e-exec-1", "shop", "web-6f7d9-abcde", "mallory", now_ms());
    let posted = Instant::now();
    // The API server's trace (kube-apiserver sends one when its tracing is on).
    let trace_id = "6a0b5e1c2d3f4a5b8c9d0e1f2a3b4c5d";
    let resp = client
        .post(cfg.webhook_url())
        .header("traceparent", format!("00-{trace_id}-1a2b3c4d5e6f7a8b-01"))
        .body(batch.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );

    let got = receiver.wait_for(1, ALERT_WAIT).await;
    assert_eq!(got.len(), 1, "one alert expected:\n{}", s.korvid.log_text());
    let latency = got[0].at.duration_since(posted);
    println!("event-to-alert latency: {} ms", latency.as_millis());

    let d = &got[0];
    assert!(d.signature_ok, "HMAC signature must verify");
    // One trace from the webhook to the alert: ingest, enrich, detect and notify each continued
    // the context they consumed (Kafka headers), and the sink sent it on.
    let sent = d.traceparent.as_deref().unwrap_or_default();
    assert_eq!(
        sent.split('-').nth(1),
        Some(trace_id),
        "the alert continues the audit request's trace: {sent:?}"
    );
    let alert = &d.body["alert"];
    assert_eq!(alert["tactic"], "EXECUTION");
    assert_eq!(alert["rule_id"], "KOR-0001");
    assert_eq!(alert["subject"]["kind"], "Pod");
    assert_eq!(alert["subject"]["namespace"], "shop");
    assert_eq!(alert["subject"]["name"], "web-6f7d9-abcde");
    assert_eq!(alert["cluster"], "e2e");
    let remediation = alert["remediation"].as_str().unwrap_or_default();
    assert!(
        remediation.contains("delete the pod") && remediation.contains("rotate"),
        "remediation text: {remediation}"
    );
    let evidence = alert["evidence"].to_string();
    assert!(
        evidence.contains("mallory") && evidence.contains("e2e-exec-1"),
        "{evidence}"
    );

    // The same batch again (kube-apiserver retries look like this): no second alert.
    let resp = client
        .post(cfg.webhook_url())
        .body(batch)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    // Its window was published for idleness, so the repeat reopens it (it is within the allowed
    // lateness): the window goes through detect again and the same finding folds into the alert.
    let evaluated = wait_metric(cfg, "korvid_detect_windows", "", 2.0, ALERT_WAIT).await;
    assert!(
        evaluated >= 2.0,
        "the repeated event's window should be evaluated again:\n{}",
        s.korvid.log_text()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "posting the same batch again must not alert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batch_is_refused_dead_lettered_and_the_next_still_alerts() {
    let s = stack().await;
    let (cfg, receiver) = (&s.cfg, &s.receiver);
    let client = http();

    let broken = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"x""#;
    let resp = client
        .post(cfg.webhook_url())
        .body(broken)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.expect("json error body");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not valid JSON"),
        "error names the problem: {error}"
    );
    assert_eq!(body["kind"], "invalid_json");

    let wrong_kind = r#"{"kind":"PodList","apiVersion":"v1","items":[]}"#;
    let resp = client
        .post(cfg.webhook_url())
        .body(wrong_kind)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap_or_default().contains("PodList"));

    let decoder = Decoder::<DeadLetter>::new();
    let letters: Vec<DeadLetter> = read_topic(&cfg.bootstrap(), "korvid.deadletter.v1")
        .iter()
        .filter_map(|v| decoder.decode(v).ok())
        .collect();
    let dl = letters
        .iter()
        .find(|d| d.payload == broken.as_bytes())
        .unwrap_or_else(|| panic!("malformed batch not in the dead-letter topic: {letters:?}"));
    assert_eq!(dl.stage, "ingest.audit_webhook");
    assert_eq!(dl.error_kind, "invalid_json");
    assert_eq!(dl.cluster.as_deref(), Some("e2e"));
    assert!(letters.iter().any(|d| d.error_kind == "wrong_kind"));
    let dead = metric(cfg, "korvid_deadletters", "invalid_json").await;
    assert!(dead >= 1.0, "dead letters are counted in metrics");

    let good = exec_batch("e2e-exec-2", "billing", "api-0", "eve", now_ms());
    let resp = client
        .post(cfg.webhook_url())
        .body(good)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let got = receiver.wait_for(1, ALERT_WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "the next good batch alerts:\n{}",
        s.korvid.log_text()
    );
    assert_eq!(got[0].body["alert"]["subject"]["name"], "api-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_restart_does_not_renotify() {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::new(dir.path(), &receiver.url);
    let client = http();
    let batch = exec_batch("e2e-exec-3", "ops", "db-0", "trudy", now_ms());

    let mut first = Korvid::start(&cfg).await;
    let resp = client
        .post(cfg.webhook_url())
        .body(batch.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        receiver.wait_for(1, ALERT_WAIT).await.len(),
        1,
        "{}",
        first.log_text()
    );

    let (status, took) = first.terminate().await;
    println!("SIGTERM to exit: {} ms", took.as_millis());
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        first.log_text()
    );
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    assert!(first.log_text().contains("korvid stopped cleanly"));

    // Same data directory: the broker keeps topics, offsets and notify's dedup state.
    let second = Korvid::start(&cfg).await;
    assert!(
        second.log_text().contains("dedup state restored")
            && second.log_text().contains("fingerprints=1"),
        "{}",
        second.log_text()
    );
    // The restarted enrich has no memory of the window, so the same events make the same
    // finding again; notify must recognise it.
    let resp = client
        .post(cfg.webhook_url())
        .body(batch)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let folded = wait_metric(
        &cfg,
        "korvid_notify_findings",
        "decision=\"replay\"",
        1.0,
        ALERT_WAIT,
    )
    .await
        + metric(&cfg, "korvid_notify_findings", "decision=\"suppress\"").await;
    assert!(
        folded >= 1.0,
        "the repeated finding reached notify:\n{}",
        second.log_text()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "no alert is sent twice across a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_dead_letters_what_it_cannot_read_and_keeps_going() {
    let s = stack().await;
    let (cfg, receiver) = (&s.cfg, &s.receiver);
    let garbage: &[(&str, &str, &[u8])] = &[
        (
            "korvid.k8s.audit.v1",
            "enrich.windows",
            b"\xc3\x01not an audit event",
        ),
        (
            "korvid.graph.windows.v1",
            "detect.rules",
            b"{\"json\": \"is not avro\"}",
        ),
        (
            "korvid.findings.v1",
            "notify",
            b"\x00\x00\x00\x00\x07garbage",
        ),
    ];
    for (topic, _, bytes) in garbage {
        produce_raw(&cfg.bootstrap(), topic, "e2e/garbage", bytes).await;
    }
    let decoder = Decoder::<DeadLetter>::new();
    let deadline = Instant::now() + ALERT_WAIT;
    let letters = loop {
        let letters: Vec<DeadLetter> = read_topic(&cfg.bootstrap(), "korvid.deadletter.v1")
            .iter()
            .filter_map(|v| decoder.decode(v).ok())
            .collect();
        // Each stage that reads a topic dead-letters its garbage (the lake reads findings too).
        let all_stages = garbage
            .iter()
            .all(|(_, stage, _)| letters.iter().any(|d| d.stage == *stage));
        if all_stages || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (topic, stage, bytes) in garbage {
        let dl = letters
            .iter()
            .find(|d| d.stage == *stage)
            .unwrap_or_else(|| {
                panic!(
                    "{stage} did not dead-letter: {letters:?}\n{}",
                    s.korvid.log_text()
                )
            });
        assert_eq!(dl.source_topic.as_deref(), Some(*topic));
        assert!(dl.source_offset.is_some());
        assert_eq!(dl.payload, *bytes);
        assert!(!dl.error.is_empty());
    }

    // Still alive: a good batch still alerts.
    let good = exec_batch("e2e-exec-4", "after", "garbage-0", "oscar", now_ms());
    post_ok(&cfg.webhook_url(), good).await;
    assert_eq!(
        receiver.wait_for(1, ALERT_WAIT).await.len(),
        1,
        "{}",
        s.korvid.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_kafka_is_used_when_configured() {
    use korvid_common::broker::{BrokerSettings, LocalBroker};
    let dir = tempfile::tempdir().expect("tmp");
    // Stands in for "the Kafka you already run": a broker korvid did not start.
    let external = LocalBroker::start(
        &BrokerSettings {
            listen: format!("127.0.0.1:{}", free_port()),
            binary: None,
            storage: "memory".into(),
        },
        &dir.path().join("external"),
    )
    .await
    .expect("external broker (make setup installs it)");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::with_kafka(dir.path(), &receiver.url, &external.bootstrap);
    let korvid = Korvid::start(&cfg).await;
    let batch = exec_batch("e2e-exec-5", "ext", "pod-0", "walter", now_ms());
    post_ok(&cfg.webhook_url(), batch).await;
    assert_eq!(
        receiver.wait_for(1, ALERT_WAIT).await.len(),
        1,
        "{}",
        korvid.log_text()
    );
    assert!(
        !dir.path().join("data/broker").exists(),
        "no embedded broker is started when kafka.bootstrap_servers is set"
    );
    // notify records the alert on its topic beside handing it to the sinks: the receiver may
    // have it a moment before the topic does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_topic(&external.bootstrap, "korvid.alerts.v1").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no alert on the external broker's alerts topic:\n{}",
            korvid.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(korvid);
    external.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_serves_https_with_client_certificates_and_a_bearer_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca_pem, client_identity) = pki(dir.path());
    let d = dir.path().display();
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::new(dir.path(), &receiver.url).with_webhook(
        &format!(
            "bearer_token_file = \"{d}/token\"\nmax_body_bytes = 1536\n\n[ingest.audit_webhook.tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server-key.pem\"\nclient_ca_file = \"{d}/ca.pem\"\n"
        ),
        true,
    );
    let korvid = Korvid::start(&cfg).await;
    let _ = http(); // installs the TLS provider
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca");
    let identity = reqwest::Identity::from_pem(client_identity.as_bytes()).expect("identity");
    let trusted = reqwest::Client::builder()
        .tls_certs_only([ca.clone()])
        .identity(identity)
        .build()
        .expect("client");
    let batch = exec_batch("e2e-exec-6", "tls", "pod-1", "victor", now_ms());

    // Right certificate, wrong token: 401, and nothing reaches Kafka.
    let resp = trusted
        .post(cfg.webhook_url())
        .bearer_auth("wrong-token-0123456789")
        .body(batch.clone())
        .send()
        .await
        .expect("https post");
    assert_eq!(resp.status(), 401);
    // No client certificate: the TLS handshake is refused.
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("client");
    let refused = anonymous
        .post(cfg.webhook_url())
        .bearer_auth("e2e-token-0123456789abcdef")
        .body(batch.clone())
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused"
    );
    // A certificate from another CA: refused too.
    let (_, stranger_identity) = pki(&dir.path().join("stranger"));
    let stranger = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .identity(reqwest::Identity::from_pem(stranger_identity.as_bytes()).expect("identity"))
        .build()
        .expect("client");
    let refused = stranger
        .post(cfg.webhook_url())
        .bearer_auth("e2e-token-0123456789abcdef")
        .body(batch.clone())
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must be refused"
    );
    // Over the body limit (1.5 KiB here): 413, and nothing is written.
    let oversized = exec_batch(&"x".repeat(2048), "tls", "pod-big", "victor", now_ms());
    let resp = trusted
        .post(cfg.webhook_url())
        .bearer_auth("e2e-token-0123456789abcdef")
        .body(oversized)
        .send()
        .await
        .expect("https post");
    assert_eq!(resp.status(), 413);
    assert_eq!(
        metric(&cfg, "korvid_ingest_audit_events_accepted", "").await,
        0.0
    );
    // Plain HTTP to the HTTPS port gets nowhere.
    let plain = http()
        .post(cfg.webhook_url().replace("https://", "http://"))
        .body(batch.clone())
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    let resp = trusted
        .post(cfg.webhook_url())
        .bearer_auth("e2e-token-0123456789abcdef")
        .body(batch)
        .send()
        .await
        .expect("https post");
    assert_eq!(resp.status(), 200);
    let got = receiver.wait_for(1, ALERT_WAIT).await;
    assert_eq!(got.len(), 1, "{}", korvid.log_text());
    assert_eq!(got[0].body["alert"]["subject"]["name"], "pod-1");
    assert_eq!(
        metric(&cfg, "korvid_ingest_audit_batches", "unauthorized").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_files_are_tailed_across_rotation_and_restart() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("audit.log");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::new(dir.path(), &receiver.url).with_extra(&format!(
        "[[ingest.audit_logs]]\npath = \"{}\"\npoll_ms = 50\n",
        log.display()
    ));
    let append = |line: String| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        f.write_all(line.as_bytes()).expect("append");
    };
    let mut first = Korvid::start(&cfg).await;
    // A pretty-printed event counts as much as a line, and garbage is skipped to the next line.
    let pretty: serde_json::Value =
        serde_json::from_str(&exec_log_line("log-1", "logs-a", "pod-a", "lena", now_ms()))
            .expect("json");
    append(format!("{pretty:#}\nthis line is not JSON\n"));
    assert_eq!(
        receiver.wait_for(1, ALERT_WAIT).await.len(),
        1,
        "{}",
        first.log_text()
    );

    // Rotation: the file is renamed and a new one starts. (Each event uses its own namespace:
    // a second event for an already-published window of the same key would be late.)
    std::fs::rename(&log, dir.path().join("audit.log.1")).expect("rotate");
    append(exec_log_line("log-2", "logs-b", "pod-b", "lena", now_ms()));
    assert_eq!(
        receiver.wait_for(2, ALERT_WAIT).await.len(),
        2,
        "{}",
        first.log_text()
    );
    assert!(metric(&cfg, "korvid_ingest_audit_log_rotations", "").await >= 1.0);
    assert!(metric(&cfg, "korvid_deadletters", "ingest.audit_log").await >= 1.0);
    let (status, _) = first.terminate().await;
    assert!(status.success());

    // Restart: nothing already read is read again; new lines are.
    let second = Korvid::start(&cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(&cfg, "korvid_ingest_audit_log_events", "").await,
        0.0,
        "checkpoint honoured"
    );
    append(exec_log_line("log-3", "logs-c", "pod-c", "lena", now_ms()));
    let got = receiver.wait_for(3, ALERT_WAIT).await;
    assert_eq!(got.len(), 3, "{}", second.log_text());
    assert_eq!(got[2].body["alert"]["subject"]["name"], "pod-c");
    assert_eq!(
        metric(&cfg, "korvid_ingest_audit_log_events", "").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_scan_reports_become_image_scans_keyed_by_digest() {
    use korvid_schemas::ImageScan;
    let s = stack().await;
    let cfg = &s.cfg;
    let url = cfg.webhook_url().replace("/audit/webhook", "/scans");
    let digest = "sha256:5d2b1c0d4f0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b";
    let grype = serde_json::json!({
        "matches": [{"vulnerability": {"id": "CVE-2024-3094", "severity": "Critical",
                      "cvss": [{"metrics": {"baseScore": 10.0}}], "fix": {"versions": ["5.6.2"]}},
                     "artifact": {"name": "xz-utils", "version": "5.6.0"}}],
        "source": {"type": "image", "target": {"userInput": "registry.example.com/ops/tools:2024.3", "manifestDigest": digest}},
        "descriptor": {"name": "grype", "version": "0.74.0"}
    });
    let resp = http()
        .post(&url)
        .body(grype.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let resp = http()
        .post(&url)
        .body("{\"not\": \"a report\"}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);

    let scans: Vec<ImageScan> = read_topic(&cfg.bootstrap(), "korvid.image.scans.v1")
        .iter()
        .filter_map(|v| Decoder::<ImageScan>::new().decode(v).ok())
        .collect();
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0].image_digest, digest);
    assert_eq!(scans[0].registry, "registry.example.com");
    assert_eq!(scans[0].vulnerabilities[0].id, "CVE-2024-3094");
    assert!(metric(cfg, "korvid_deadletters", "ingest.scans").await >= 1.0);
}

#[test]
fn an_invalid_setting_fails_fast_and_names_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("up")
        .env("KORVID__ENRICH__WINDOW_MS", "5")
        .output()
        .expect("run korvid");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enrich.window_ms"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("korvid.toml");
    std::fs::write(&file, "[notify]\nrepeat_intervall_ms = 1000\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(&file)
        .arg("up")
        .output()
        .expect("run korvid");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("repeat_intervall_ms"));
}

#[test]
fn a_missing_broker_says_how_to_install_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("up")
        .env("KORVID__DATA_DIR", dir.path())
        .env("KORVID__BROKER__BINARY", dir.path().join("no-such-tansu"))
        .env("KORVID__TELEMETRY__LISTEN", "")
        .output()
        .expect("run korvid");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not installed") && err.contains("cargo install tansu"),
        "{err}"
    );
}
