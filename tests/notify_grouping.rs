//! Grouping over a simulated hour, on the real broker: 10,000 findings for 50 fingerprints go
//! straight onto the findings topic with their own times (notify runs on `clock = "findings"`),
//! notify is restarted half-way, and what reaches the receiver must be exactly what the
//! grouping settings predict.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use korvid_schemas::codec::{Framing, encode};
use korvid_schemas::*;
use support::*;

const FINDINGS: usize = 10_000;
const FINGERPRINTS: usize = 50;
const RULES: usize = 5;
/// One finding every 324 ms: about 11,100 slots make the hour.
const SLOT_MS: i64 = 324;
const MINUTE: i64 = 60_000;
/// Rule 4's fingerprints go quiet after this.
const QUIET_FROM: i64 = 30 * MINUTE;

const GROUPING: &str = r#"
[notify]
clock = "findings"
idle_ms = 5000
group_by = ["rule"]
group_wait_ms = 30000
group_interval_ms = 300000
repeat_interval_ms = 1200000
resolve_timeout_ms = 300000
stdout = false
"#;

/// The findings, in time order: slot `i` is fingerprint `i % 50` (rule `fingerprint % 5`);
/// rule 4's fingerprints stop at 30 minutes.
fn findings(start: i64) -> Vec<Finding> {
    let mut out = Vec::with_capacity(FINDINGS);
    let mut slot = 0i64;
    while out.len() < FINDINGS {
        let at = slot * SLOT_MS;
        let fp = (slot as usize) % FINGERPRINTS;
        let rule = fp % RULES;
        slot += 1;
        if rule == 4 && at >= QUIET_FROM {
            continue;
        }
        out.push(Finding {
            cluster: "hour".into(),
            event_time: start + at,
            id: format!("finding-{slot}"),
            fingerprint: format!("fp-{fp:02}"),
            window_id: format!("w-{slot}"),
            detected_at: start + at,
            detector: Detector::Rule,
            rule_id: Some(format!("KOR-90{rule:02}")),
            model_version: None,
            score: 1.0,
            title: format!("test rule {rule}"),
            tactic: Tactic::Execution,
            techniques: vec!["T1609".into()],
            severity: Severity::High,
            subject: Subject {
                kind: "Pod".into(),
                namespace: Some("hour".into()),
                name: format!("pod-{fp:02}"),
                uid: None,
            },
            evidence: vec![],
            implication: "i".into(),
            remediation: "r".into(),
            prevention: "p".into(),
            references: vec![],
        });
    }
    out
}

/// What the settings predict, per-alert notifications:
/// - every fingerprint once when its group is first notified (group_wait 30 s; all ten of a
///   rule's fingerprints have appeared by then): 50 firing;
/// - rules 0–3 fire all hour unchanged: repeated every 20 min after their first notification
///   (at ~20:30 and ~40:30; the third would be at ~60:30, after the hour): 4 × 2 × 10 = 80;
/// - rule 4 repeats at ~20:30 (10), then goes quiet at 30:00 and each fingerprint resolves
///   five minutes after its last finding: 10 resolved.
const PREDICTED_FIRING: usize = 50 + 80 + 10;
const PREDICTED_RESOLVED: usize = 10;

async fn produce(bootstrap: &str, batch: &[Finding]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for chunk in batch.chunks(500) {
        let sends = chunk.iter().map(|f| {
            let bytes = encode(f, Framing::SingleObject).expect("encode");
            let producer = producer.clone();
            let key = f.fingerprint.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to("korvid.findings.v1")
                            .key(&key)
                            .payload(&bytes),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("produce")
            }
        });
        futures::future::join_all(sends).await;
    }
}

async fn handled(cfg: &KorvidConfig) -> f64 {
    metric(cfg, "korvid_notify_findings_total", "decision=").await
}

async fn wait_handled(cfg: &KorvidConfig, n: usize, korvid: &Korvid) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let got = handled(cfg).await;
        if got >= n as f64 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "notify handled {got} of {n} findings:\n{}",
            korvid.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_findings_yields_the_predicted_alerts_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::new(dir.path(), &receiver.url).with_extra(GROUPING);
    // Well in the past: the findings clock must not care about the wall clock.
    let start = now_ms() - 30 * 24 * 3600 * 1000;
    let all = findings(start);
    assert_eq!(all.len(), FINDINGS);
    let (first, second) = all.split_at(FINDINGS / 2);

    let mut korvid = Korvid::start(&cfg).await;
    let began = std::time::Instant::now();
    produce(&cfg.bootstrap(), first).await;
    wait_handled(&cfg, first.len(), &korvid).await;
    let (status, _) = korvid.terminate().await;
    assert!(status.success(), "{}", korvid.log_text());
    let before_restart = receiver.deliveries().len();

    let korvid = Korvid::start(&cfg).await;
    produce(&cfg.bootstrap(), second).await;
    wait_handled(&cfg, second.len(), &korvid).await;
    println!(
        "{FINDINGS} findings through notify (with a restart) in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    // Let the sinks finish, well before the idle clock could reach the next repeats.
    let expected = PREDICTED_FIRING + PREDICTED_RESOLVED;
    let got = receiver
        .wait_for(expected + 1, Duration::from_secs(5))
        .await;

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    for d in &got {
        let status = d.body["alert"]["status"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        *by_status.entry(status).or_default() += 1;
        ids.insert(
            d.body["notification_id"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
        );
        assert!(d.signature_ok, "signed");
    }
    println!("before the restart: {before_restart}; in all: {by_status:?}");
    for d in &got {
        let a = &d.body["alert"];
        println!(
            "{} {} at {:.1} min (last seen {:.1} min, first {:.1} min)",
            a["status"],
            a["fingerprint"],
            (a["event_time"].as_i64().unwrap_or(0) - start) as f64 / 60_000.0,
            (a["last_seen"].as_i64().unwrap_or(0) - start) as f64 / 60_000.0,
            (a["first_seen"].as_i64().unwrap_or(0) - start) as f64 / 60_000.0,
        );
    }
    assert_eq!(
        by_status.get("FIRING").copied().unwrap_or(0),
        PREDICTED_FIRING,
        "{by_status:?}\n{}",
        korvid.log_text()
    );
    assert_eq!(
        by_status.get("RESOLVED").copied().unwrap_or(0),
        PREDICTED_RESOLVED,
        "{by_status:?}"
    );
    assert_eq!(ids.len(), got.len(), "no notification twice");
    assert!(
        before_restart > 0 && before_restart < expected,
        "the restart fell mid-way ({before_restart} of {expected} sent before it)"
    );
    // The alerts topic saw the same notifications.
    let on_topic = read_topic(&cfg.bootstrap(), "korvid.alerts.v1").len();
    assert_eq!(on_topic, expected);
}
