//! The latency, lag and batching metrics come out of a real run with sane values: one
//! `kubectl exec` goes through `korvid up` (embedded broker, graph model on) to an HTTP
//! receiver, then `/metrics` is read the way Prometheus reads it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::*;

const ALERT_WAIT: Duration = Duration::from_secs(60);
/// librdkafka reports statistics every 5 s; offsets are committed every second.
const LAG_WAIT: Duration = Duration::from_secs(30);

/// One exposition: `name{labels}` -> value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn of(cfg: &KorvidConfig) -> Scrape {
        let text = http()
            .get(cfg.telemetry_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the exposition");
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
            };
            samples.insert(series.to_string(), value);
        }
        Scrape(samples)
    }

    /// The value of one series (`name` or `name{a="b",...}` exactly as exposed).
    fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// A histogram's (count, sum) over the label set `labels` (`""` for none), checking that
    /// its `+Inf` bucket counts every observation.
    fn histogram(&self, name: &str, labels: &str) -> (f64, f64) {
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let count = self
            .get(&format!("{name}_count{}", braces(labels)))
            .unwrap_or_else(|| panic!("{name}{{{labels}}} is not exposed"));
        let sum = self
            .get(&format!("{name}_sum{}", braces(labels)))
            .unwrap_or_else(|| panic!("{name}_sum{{{labels}}} is not exposed"));
        // prometheus-client writes `le` before the family's labels.
        let le = if labels.is_empty() {
            "le=\"+Inf\"".to_string()
        } else {
            format!("le=\"+Inf\",{labels}")
        };
        assert_eq!(
            self.get(&format!("{name}_bucket{{{le}}}")),
            Some(count),
            "{name}: the +Inf bucket holds every observation"
        );
        (count, sum)
    }

    /// Every `korvid_kafka_consumer_lag` series: (group, topic) -> messages.
    fn lag(&self) -> BTreeMap<(String, String), f64> {
        let label = |labels: &str, key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        self.0
            .iter()
            .filter_map(|(series, v)| {
                let labels = series
                    .strip_prefix("korvid_kafka_consumer_lag{")?
                    .strip_suffix('}')?;
                Some(((label(labels, "group"), label(labels, "topic")), *v))
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_run_reports_latency_lag_and_batching() {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    // The model on for certain: without ONNX Runtime korvid refuses to start (make setup).
    let cfg =
        KorvidConfig::new(dir.path(), &receiver.url).with_extra("[detect.model]\nmode = \"on\"\n");
    let korvid = Korvid::start(&cfg).await;

    let posted = Instant::now();
    post_ok(
        &cfg.webhook_url(),
        exec_batch("obs-exec-1", "shop", "web-6f7d9-abcde", "mallory", now_ms()),
    )
    .await;
    let got = receiver.wait_for(1, ALERT_WAIT).await;
    assert_eq!(got.len(), 1, "one alert expected:\n{}", korvid.log_text());

    // The sink's histogram is observed after the receiver answered: wait for it.
    wait_metric(
        &cfg,
        "korvid_notify_sink_delivery_seconds_count",
        "sink=\"receiver\"",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let m = Scrape::of(&cfg).await;
    // Everything the scrape shows happened between the post and now.
    let elapsed = posted.elapsed().as_secs_f64();

    // enrich: each window waited at most as long as the test did (one the idle flush published
    // before its end waited nothing), and building it took some time.
    let (count, sum) = m.histogram("korvid_enrich_window_latency_seconds", "");
    assert!(count >= 1.0, "enrich published no window");
    assert!(
        (0.0..=elapsed * count).contains(&sum),
        "window latency {sum} s over {count} windows, the test took {elapsed:.1} s"
    );
    let (count, sum) = m.histogram("korvid_enrich_window_build_seconds", "");
    assert!(
        count >= 1.0 && sum > 0.0 && sum < elapsed,
        "build {sum} s / {count}"
    );

    // detect: the window was evaluated and scored, one or more graphs per inference.
    let (windows, sum) = m.histogram("korvid_detect_window_seconds", "");
    assert!(
        windows >= 1.0 && sum > 0.0 && sum < elapsed,
        "evaluation {sum} s / {windows}"
    );
    let (batches, graphs) = m.histogram("korvid_detect_model_batch_graphs", "");
    assert!(batches >= 1.0, "no inference ran:\n{}", korvid.log_text());
    assert!(
        graphs >= batches && graphs <= windows,
        "{graphs} graphs in {batches} batches, {windows} windows"
    );
    let (runs, sum) = m.histogram("korvid_detect_model_batch_seconds", "");
    assert_eq!(runs, batches, "every inference is timed");
    assert!(sum > 0.0 && sum < elapsed, "inference {sum} s");

    // notify: from the finding's event time (its window's end, at or after the audit event)
    // to the hand-over, within what the test measured.
    let (count, sum) = m.histogram("korvid_notify_event_to_alert_seconds", "");
    assert!(count >= 1.0, "the alert's hand-over was not timed");
    assert!(
        (0.0..=elapsed * count).contains(&sum),
        "event to alert {sum} s over {count} alerts, the test measured {elapsed:.1} s"
    );
    let (count, sum) = m.histogram("korvid_notify_sink_delivery_seconds", "sink=\"receiver\"");
    assert!(
        count >= 1.0 && sum > 0.0 && sum < elapsed,
        "receiver {sum} s / {count}"
    );
    let summary: Vec<String> =
        m.0.iter()
            .filter(|(k, _)| k.contains("_sum"))
            .filter(|(k, _)| k.contains("seconds") || k.contains("graphs"))
            .map(|(k, v)| format!("{k} = {v:.4}"))
            .collect();
    println!("after {elapsed:.2} s:\n  {}", summary.join("\n  "));

    // Consumer lag, per group and topic, for every consumer group.
    let topics = |t: &str| format!("korvid.{t}");
    let expected = [
        ("korvid-enrich", topics("k8s.audit.v1")),
        ("korvid-enrich", topics("k8s.events.v1")),
        ("korvid-detect", topics("graph.windows.v1")),
        ("korvid-notify", topics("findings.v1")),
        ("korvid-lake", topics("findings.v1")),
    ];
    let deadline = Instant::now() + LAG_WAIT;
    let lag = loop {
        let lag = Scrape::of(&cfg).await.lag();
        let all = expected
            .iter()
            .all(|(g, t)| lag.contains_key(&(g.to_string(), t.clone())));
        if all || Instant::now() > deadline {
            break lag;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (group, topic) in &expected {
        let v = lag.get(&(group.to_string(), topic.clone()));
        assert!(
            v.is_some_and(|v| *v >= 0.0),
            "korvid_kafka_consumer_lag{{group={group},topic={topic}}}: {v:?} in {lag:?}"
        );
    }
    assert!(
        lag.keys()
            .all(|(g, t)| g.starts_with("korvid-") && t.starts_with("korvid.")),
        "labels are groups and topics only: {lag:?}"
    );
    // The stages that commit as they go catch up: their lag comes down to nothing.
    let caught_up = |lag: &BTreeMap<(String, String), f64>| {
        expected[..4]
            .iter()
            .all(|(g, t)| lag.get(&(g.to_string(), t.clone())) == Some(&0.0))
    };
    let deadline = Instant::now() + LAG_WAIT;
    let mut lag = lag;
    while !caught_up(&lag) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        lag = Scrape::of(&cfg).await.lag();
    }
    assert!(
        caught_up(&lag),
        "lag after the pipeline went quiet: {lag:?}"
    );
    println!("consumer lag: {lag:?}");

    // The group watch (common/src/kafka/group_watch.rs) looks every 5 s and rejoins after two
    // looks in a row find a consumer short of its partitions: past two looks, a healthy group
    // has never been left and joined again.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(posted.elapsed())).await;
    let m = Scrape::of(&cfg).await;
    for group in [
        "korvid-enrich",
        "korvid-detect",
        "korvid-notify",
        "korvid-lake",
    ] {
        let series = format!("korvid_kafka_group_rejoins_total{{group=\"{group}\"}}");
        assert_eq!(m.get(&series), Some(0.0), "{series}");
    }
}
