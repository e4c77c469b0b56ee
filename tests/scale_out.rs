//! Scale-out on a real broker (tansu): every service its own process, two `korvid detect`
//! processes in one consumer group sharing the windows topic's partitions. One is killed
//! (SIGKILL, no goodbye) mid-stream and replaced; every window is still evaluated (the
//! uncommitted ones again), and no alert is sent twice.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use korvid_schemas::{Decoder, Finding, GraphWindow};
use support::*;

async fn post_execs(cfg: &KorvidConfig, range: std::ops::Range<usize>) {
    for i in range {
        let batch = exec_batch(
            &format!("scale-{i}"),
            &format!("team-{i}"),
            &format!("api-{i}"),
            &format!("user-{i}"),
            now_ms(),
        );
        post_ok(&cfg.webhook_url(), batch).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_detect_instances_share_windows_and_a_killed_one_loses_nothing() {
    use korvid_common::broker::{BrokerSettings, LocalBroker};
    let dir = tempfile::tempdir().expect("tmp");
    let broker = LocalBroker::start(
        &BrokerSettings {
            listen: format!("127.0.0.1:{}", free_port()),
            binary: None,
            storage: "memory".into(),
        },
        &dir.path().join("broker"),
    )
    .await
    .expect("broker (make setup installs it)");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::with_kafka(dir.path(), &receiver.url, &broker.bootstrap).with_extra(
        "[kafka.client]\n\"max.poll.interval.ms\" = \"15000\"\n\"session.timeout.ms\" = \"6000\"\n",
    );

    // Topics first (ingest creates them), then the consumers.
    let mut ingest = Service::start(&cfg, "ingest", "ingest");
    ingest.ready().await;
    let mut services = vec![
        Service::start(&cfg, "enrich", "enrich"),
        Service::start(&cfg, "notify", "notify"),
    ];
    let mut a = Service::start(&cfg, "detect", "detect-a");
    let mut b = Service::start(&cfg, "detect", "detect-b");
    for s in services.iter_mut().chain([&mut a, &mut b]) {
        s.ready().await;
    }
    let logs = |extra: &[&Service]| {
        extra
            .iter()
            .map(|s| s.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Wait for the group to settle: two partitions each.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ![&a, &b].iter().all(|s| {
        s.log_text()
            .lines()
            .rfind(|l| l.contains("partitions assigned"))
            .is_some_and(|l| l.ends_with("partitions=2"))
    }) {
        assert!(
            Instant::now() < deadline,
            "the group did not settle:\n{}",
            logs(&[&a, &b])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // First half: both instances take part.
    post_execs(&cfg, 0..24).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (wa, wb) = (
            a.metric("korvid_detect_windows").await,
            b.metric("korvid_detect_windows").await,
        );
        if wa >= 1.0 && wb >= 1.0 && receiver.deliveries().len() >= 12 {
            println!("before the kill: detect-a {wa} windows, detect-b {wb}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both instances should evaluate windows (a {wa}, b {wb}, {} alerts):\n{}",
            receiver.deliveries().len(),
            logs(&[&a, &b])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Kill one mid-stream, with windows of its partitions still coming. The survivor takes
    // every partition over once the dead member's session has timed out. (tansu 0.6 alone
    // would keep the old assignment and leave the dead member's partitions unowned; the
    // consumers' group watch, common/src/kafka/group_watch.rs, sees that and rejoins.) Then
    // the replacement joins as an orchestrator would start it, and the two share again.
    a.kill_hard();
    post_execs(&cfg, 24..48).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b
        .log_text()
        .lines()
        .rfind(|l| l.contains("partitions assigned"))
        .is_some_and(|l| l.ends_with("partitions=4"))
    {
        assert!(
            Instant::now() < deadline,
            "the survivor never took the dead member's partitions over:\n{}",
            logs(&[&b])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = Service::start(&cfg, "detect", "detect-c");
    c.ready().await;

    let expected: BTreeSet<String> = (0..48).map(|i| format!("api-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let exec_alerts = loop {
        let got: Vec<serde_json::Value> = receiver
            .deliveries()
            .into_iter()
            .map(|d| d.body["alert"].clone())
            .filter(|a| a["rule_id"] == "KOR-0001")
            .collect();
        let pods: BTreeSet<String> = got
            .iter()
            .filter_map(|a| a["subject"]["name"].as_str().map(str::to_string))
            .collect();
        if pods == expected {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "missing exec alerts for {:?}:\n{}\n--- broker ---\n{}",
            expected.difference(&pods).collect::<Vec<_>>(),
            logs(&[&a, &b, &c, &services[0], &services[1]]),
            std::fs::read_to_string(&broker.log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Let any re-evaluation of the killed instance's uncommitted windows come through.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // No alert twice: every fingerprint was delivered once.
    let mut per_fingerprint: BTreeMap<String, usize> = BTreeMap::new();
    for d in receiver.deliveries() {
        let fp = d.body["alert"]["fingerprint"]
            .as_str()
            .expect("fingerprint")
            .to_string();
        *per_fingerprint.entry(fp).or_default() += 1;
    }
    let twice: Vec<_> = per_fingerprint.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "alerts sent twice: {twice:?}\n{:#?}",
        receiver
            .deliveries()
            .iter()
            .filter(|d| twice
                .iter()
                .any(|(fp, _)| d.body["alert"]["fingerprint"] == **fp))
            .map(|d| (&d.notification_id, &d.body))
            .collect::<Vec<_>>()
    );
    assert_eq!(exec_alerts.len(), 48);

    // No window lost: every window enrich published has findings from detect.
    let windows: Vec<GraphWindow> = {
        let decoder = Decoder::<GraphWindow>::new();
        read_topic(&cfg.bootstrap(), "korvid.graph.windows.v1")
            .iter()
            .filter_map(|v| decoder.decode(v).ok())
            .collect()
    };
    let findings: BTreeSet<String> = {
        let decoder = Decoder::<Finding>::new();
        read_topic(&cfg.bootstrap(), "korvid.findings.v1")
            .iter()
            .filter_map(|v| decoder.decode(v).ok())
            .map(|f| f.window_id)
            .collect()
    };
    let exec_windows: Vec<&GraphWindow> = windows
        .iter()
        .filter(|w| w.partition_key.contains("/team-"))
        .collect();
    assert!(exec_windows.len() >= 48, "{} windows", exec_windows.len());
    for w in exec_windows {
        assert!(
            findings.contains(&w.window_id),
            "window {} ({}) was never evaluated",
            w.window_id,
            w.partition_key
        );
    }
    println!(
        "after the kill: detect-b evaluated {} windows in all (rejoining its group {} times), \
         its replacement {}",
        b.metric("korvid_detect_windows").await,
        b.metric("korvid_kafka_group_rejoins_total").await,
        c.metric("korvid_detect_windows").await
    );
    drop(services);
    drop(b);
    drop(c);
    drop(ingest);
    broker.stop(Duration::from_secs(2)).await;
}
