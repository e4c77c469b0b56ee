//! A sink down for 30 seconds, then back: every alert reaches it exactly once, and the other
//! sinks never wait for it.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::*;

const OUTAGE: Duration = Duration::from_secs(30);
const ALERTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_for_30_s_gets_every_alert_once_and_delays_no_other() {
    let dir = tempfile::tempdir().expect("tmp");
    let healthy = Receiver::start().await;
    let flaky_port = free_port();
    let cfg = KorvidConfig::new(dir.path(), &healthy.url).with_extra(&format!(
        r#"
[notify]
group_by = ["fingerprint"]
group_wait_ms = 0

[[notify.sinks]]
kind = "webhook"
name = "flaky"
url = "http://127.0.0.1:{flaky_port}/alerts"
hmac_secret = "{HMAC_SECRET}"
timeout_ms = 1000

[notify.sinks.delivery]
initial_backoff_ms = 200
max_backoff_ms = 3000
breaker_failures = 3
breaker_cooldown_ms = 2000
"#
    ));
    let korvid = Korvid::start(&cfg).await;
    let client = http();
    let down_since = Instant::now();

    // Alerts keep coming during the outage; the healthy receiver gets each one promptly.
    let mut slowest = Duration::ZERO;
    for i in 0..ALERTS {
        let posted = Instant::now();
        let batch = exec_batch(
            &format!("outage-{i}"),
            "shop",
            &format!("web-{i}"),
            "mallory",
            now_ms(),
        );
        let resp = client
            .post(cfg.webhook_url())
            .body(batch)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200);
        let got = healthy.wait_for(i + 1, Duration::from_secs(20)).await;
        assert!(
            got.len() > i,
            "healthy sink got alert {i}:\n{}",
            korvid.log_text()
        );
        slowest = slowest.max(posted.elapsed());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    println!("slowest alert at the healthy sink during the outage: {slowest:?}");
    let breaker = metric(&cfg, "korvid_notify_sink_breaker_open", "sink=\"flaky\"").await;
    assert_eq!(breaker, 1.0, "the flaky sink's breaker is open");

    // Back after 30 s, on the same port.
    if let Some(rest) = OUTAGE.checked_sub(down_since.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let flaky = Receiver::start_on(flaky_port).await;
    let back = Instant::now();
    let sent = healthy.deliveries().len();
    let got = flaky.wait_for(sent, Duration::from_secs(30)).await;
    println!(
        "flaky sink caught up {:?} after coming back",
        back.elapsed()
    );
    assert_eq!(got.len(), sent, "{}", korvid.log_text());
    // Nothing more arrives: no alert twice, and the same alerts as the healthy sink.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids = |r: &Receiver| -> (usize, BTreeSet<String>) {
        let d = r.deliveries();
        let set = d
            .iter()
            .map(|d| {
                d.body["notification_id"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        (d.len(), set)
    };
    let (flaky_n, flaky_ids) = ids(&flaky);
    let (healthy_n, healthy_ids) = ids(&healthy);
    assert_eq!(flaky_n, flaky_ids.len(), "exactly once at the flaky sink");
    assert_eq!(
        healthy_n,
        healthy_ids.len(),
        "exactly once at the healthy sink"
    );
    assert_eq!(flaky_ids, healthy_ids, "the same alerts at both");
    assert!(flaky_n >= ALERTS);
    assert!(flaky.deliveries().iter().all(|d| d.signature_ok));
    let lost = metric(
        &cfg,
        "korvid_notify_sink_alerts_total",
        "sink=\"flaky\",result=\"dead_letter\"",
    )
    .await;
    assert_eq!(lost, 0.0, "nothing dead-lettered for the flaky sink");
}
