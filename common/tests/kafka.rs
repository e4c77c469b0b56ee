//! The Kafka helpers against a real broker (tansu, memory storage, started per test).

use std::time::Duration;

use korvid_common::Telemetry;
use korvid_common::broker::{BrokerSettings, LocalBroker};
use korvid_common::kafka::{DeadLetterSource, KafkaContext, KafkaSettings};
use korvid_schemas::codec::Decoder;
use korvid_schemas::{DeadLetter, DedupState};
use rdkafka::message::Message;

async fn broker(dir: &std::path::Path) -> LocalBroker {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let settings = BrokerSettings {
        listen: format!("127.0.0.1:{port}"),
        binary: None,
        storage: "memory".into(),
    };
    LocalBroker::start(&settings, dir)
        .await
        .unwrap_or_else(|e| panic!("the broker must be installed for this test (make setup): {e}"))
}

async fn context(b: &LocalBroker, prefix: &str) -> KafkaContext {
    let settings = KafkaSettings {
        topic_prefix: prefix.into(),
        partitions: 1,
        ..Default::default()
    };
    let ctx = KafkaContext::new(settings, b.bootstrap.clone(), &Telemetry::new());
    ctx.wait_for_broker(Duration::from_secs(20))
        .await
        .expect("broker answers");
    ctx.ensure_topics().await.expect("topics");
    ctx.ensure_topics()
        .await
        .expect("creating existing topics is fine");
    ctx
}

fn state(i: i64) -> DedupState {
    DedupState {
        cluster: "c".into(),
        event_time: i,
        fingerprint: format!("fp{}", i % 3),
        alert_id: format!("a{i}"),
        first_seen: i,
        last_seen: i,
        last_notified: i,
        occurrences: i,
        recent_finding_ids: vec![],
        partition: None,
        notified_status: None,
        latest_finding: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_after_the_last_stored_offset() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = broker(dir.path()).await;
    let ctx = context(&b, "t1").await;
    let topic = ctx.topics.findings.clone();
    let producer = ctx.producer().expect("producer");
    for i in 0..10 {
        producer.send(&topic, "k", &state(i)).await.expect("acked");
    }
    let decoder = Decoder::<DedupState>::new();

    // First consumer processes 0..=5 but only "finishes" (stores) up to offset 3.
    let first = ctx.consumer("g1", &[&topic]).expect("consumer");
    for _ in 0..6 {
        let m = first.recv().await.expect("message");
        let s = decoder
            .decode(m.payload().expect("value"))
            .expect("decodes");
        if s.event_time <= 3 {
            first
                .store(m.topic(), m.partition(), m.offset())
                .expect("store");
        }
    }
    first.commit_now().expect("commit");
    first.close();

    // The group resumes right after the last stored offset: 4 comes again, nothing is lost.
    let second = ctx.consumer("g1", &[&topic]).expect("consumer");
    let m = tokio::time::timeout(Duration::from_secs(20), second.recv())
        .await
        .expect("a message within 20 s")
        .expect("message");
    let s = decoder
        .decode(m.payload().expect("value"))
        .expect("decodes");
    assert_eq!(s.event_time, 4);
    drop(m);
    second.close();
    b.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_to_end_sees_every_record_and_tombstone() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = broker(dir.path()).await;
    let ctx = context(&b, "t2").await;
    let topic = ctx.topics.notify_state.clone();
    assert!(
        ctx.read_to_end(&topic)
            .await
            .expect("empty topic")
            .is_empty()
    );
    let producer = ctx.producer().expect("producer");
    for i in 0..5 {
        producer
            .send(&topic, &format!("fp{i}"), &state(i))
            .await
            .expect("acked");
    }
    producer.tombstone(&topic, "fp0").await.expect("tombstone");
    let all = ctx.read_to_end(&topic).await.expect("read");
    assert_eq!(all.len(), 6);
    assert!(
        all.last().expect("last").1.is_none(),
        "the tombstone has no value"
    );
    b.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_carry_reason_source_and_a_bounded_payload() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = broker(dir.path()).await;
    let mut settings = KafkaSettings {
        topic_prefix: "t3".into(),
        partitions: 1,
        ..Default::default()
    };
    settings.deadletter_max_payload_bytes = 8;
    let telemetry = Telemetry::new();
    let ctx = KafkaContext::new(settings, b.bootstrap.clone(), &telemetry);
    ctx.wait_for_broker(Duration::from_secs(20))
        .await
        .expect("broker");
    ctx.ensure_topics().await.expect("topics");
    let dl = ctx.dead_letters(ctx.producer().expect("producer"));
    dl.send(
        "test.stage",
        "invalid_json",
        "body is not JSON",
        b"0123456789abcdef",
        DeadLetterSource {
            cluster: Some("c".into()),
            topic: Some("in".into()),
            partition: Some(2),
            offset: Some(41),
        },
    )
    .await
    .expect("dead letter acked");
    let values = ctx.read_to_end(&ctx.topics.deadletter).await.expect("read");
    let d = Decoder::<DeadLetter>::new()
        .decode(values[0].1.as_deref().expect("value"))
        .expect("decodes");
    assert_eq!(d.stage, "test.stage");
    assert_eq!(d.payload, b"01234567");
    assert!(d.payload_truncated);
    assert_eq!((d.source_partition, d.source_offset), (Some(2), Some(41)));
    assert!(
        telemetry
            .encode()
            .contains("korvid_deadletters_total{stage=\"test.stage\",kind=\"invalid_json\"} 1")
    );
    b.stop(Duration::from_secs(2)).await;
}
