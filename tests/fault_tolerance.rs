//! Faults on a real broker: every service its own process; while attacks, ordinary requests and
//! malformed batches stream in, each service in turn is killed with SIGKILL and started again at once
//! (one run, on tansu), or the broker itself goes away mid-stream with a batch in flight and comes
//! back with its log (another run). Afterwards every attack
//! has exactly one alert, and every input is accounted for: each accepted audit event is on the
//! audit topic and in a published graph window (or dead-lettered as late), each malformed batch
//! is a dead letter, and nothing was invented on the way.
//!
//! The broker-restart run uses librdkafka's mock cluster (the Kafka protocol over TCP, in this
//! process) as the broker: it keeps its log while it refuses and drops every connection, which is
//! what clients see of a restart. tansu 0.6 cannot be restarted reliably here: its SQLite storage
//! loses its storage task now and then (an `unreachable!` in tansu-storage's service.rs), after
//! which it answers every request with an error; that run on tansu is kept, ignored, to rerun by
//! hand when tansu changes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use korvid_common::broker::{BrokerSettings, LocalBroker};
use korvid_schemas::{AuditEvent, DeadLetter, Decoder, GraphWindow};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use support::*;

/// Posts an audit batch the way kube-apiserver's webhook backend does: until it is taken
/// (connection refused and 5xx while ingest is down are retried). Returns the final status.
async fn post_retrying(url: &str, body: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match http().post(url).body(body.to_string()).send().await {
            Ok(r) if r.status().as_u16() < 500 => return r.status().as_u16(),
            _ => {}
        }
        assert!(Instant::now() < deadline, "ingest never took a batch");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A benign read of `namespace/pod` (a different activity row from the exec).
fn get_batch(audit_id: &str, namespace: &str, pod: &str, user: &str, ms: i64) -> String {
    let mut list: serde_json::Value =
        serde_json::from_str(&exec_batch(audit_id, namespace, pod, user, ms)).expect("json");
    let ev = &mut list["items"][0];
    ev["verb"] = "get".into();
    ev["stage"] = "ResponseComplete".into();
    ev["requestURI"] = format!("/api/v1/namespaces/{namespace}/pods/{pod}").into();
    ev["objectRef"]
        .as_object_mut()
        .expect("objectRef")
        .remove("subresource");
    ev["responseStatus"]["code"] = 200.into();
    list.to_string()
}

/// What one round sent: an exec into its own pod (an attack), a read of it, and a malformed
/// batch.
struct Round {
    attack: String,
    accepted_ids: [String; 2],
    malformed: String,
}

async fn round(url: String, i: usize) -> Round {
    let (ns, pod, user) = (format!("ft-{i}"), format!("api-{i}"), format!("user-{i}"));
    let (exec, get) = (format!("ft-exec-{i}"), format!("ft-get-{i}"));
    let batch = exec_batch(&exec, &ns, &pod, &user, now_ms());
    assert_eq!(post_retrying(&url, &batch).await, 200);
    let batch = get_batch(&get, &ns, &pod, &user, now_ms());
    assert_eq!(post_retrying(&url, &batch).await, 200);
    let malformed = format!("broken-{i}");
    let bad = format!("{{\"kind\": \"EventList\", \"items\": [ {malformed}");
    assert_eq!(post_retrying(&url, &bad).await, 400);
    Round {
        attack: pod,
        accepted_ids: [exec, get],
        malformed,
    }
}

/// Everything sent so far.
#[derive(Default)]
struct Sent {
    attacks: BTreeSet<String>,
    accepted_ids: BTreeSet<String>,
    malformed: BTreeSet<String>,
    rounds: usize,
}

impl Sent {
    fn add(&mut self, r: Round) {
        self.attacks.insert(r.attack);
        self.accepted_ids.extend(r.accepted_ids);
        self.malformed.insert(r.malformed);
        self.rounds += 1;
    }

    async fn next(&mut self, cfg: &KorvidConfig) {
        let r = round(cfg.webhook_url(), self.rounds).await;
        self.add(r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_service_in_turn_loses_and_repeats_nothing() {
    faults(Broker::tansu("memory").await, Faults::KillEachService).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_with_a_batch_in_flight_loses_and_repeats_nothing() {
    faults(Broker::mock(), Faults::RestartBroker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6's SQLite storage loses its storage task (`unreachable!` in \
            tansu-storage service.rs) now and then, most under the parallel suite; run it with \
            cargo nextest run --workspace --test fault_tolerance --run-ignored ignored-only"]
async fn restarting_tansu_loses_and_repeats_nothing() {
    // On its on-disk storage, so what it acknowledged survives the restart.
    faults(Broker::tansu("sqlite").await, Faults::RestartBroker).await;
}

/// The broker of a run.
enum Broker {
    /// tansu in its own process.
    Tansu(Box<Tansu>),
    /// librdkafka's mock cluster (one broker) in this process.
    Mock(MockCluster<'static, DefaultProducerContext>),
}

/// tansu on `settings.storage` in `dir`, while `running`.
struct Tansu {
    settings: BrokerSettings,
    dir: tempfile::TempDir,
    running: Option<LocalBroker>,
}

impl Broker {
    async fn tansu(storage: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tmp");
        let settings = BrokerSettings {
            listen: format!("127.0.0.1:{}", free_port()),
            binary: None,
            storage: storage.into(),
        };
        let running = LocalBroker::start(&settings, dir.path())
            .await
            .expect("broker (make setup installs it)");
        Broker::Tansu(Box::new(Tansu {
            settings,
            dir,
            running: Some(running),
        }))
    }

    /// The mock cluster has no CreateTopics: the topics are made here, with the partitions
    /// the test services ask for (support's `Service` sets 4), and korvid creates none.
    fn mock() -> Broker {
        let cluster = MockCluster::new(1).expect("librdkafka mock cluster");
        for (topic, _) in korvid_common::kafka::Topics::new("korvid").all() {
            cluster.create_topic(topic, 4, 1).expect("mock topic");
        }
        Broker::Mock(cluster)
    }

    fn bootstrap(&self) -> String {
        match self {
            Broker::Tansu(t) => t.settings.listen.clone(),
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
        }
    }

    /// Goes away: connections dropped and refused.
    async fn go_away(&mut self) {
        match self {
            Broker::Tansu(t) => {
                t.running
                    .take()
                    .expect("running")
                    .stop(Duration::from_secs(5))
                    .await;
            }
            Broker::Mock(cluster) => cluster.broker_down(-1).expect("broker down"),
        }
    }

    /// Comes back on the data it had.
    async fn come_back(&mut self) {
        match self {
            Broker::Tansu(t) => {
                t.running = Some(
                    LocalBroker::start(&t.settings, t.dir.path())
                        .await
                        .expect("broker restarts"),
                );
            }
            Broker::Mock(cluster) => cluster.broker_up(-1).expect("broker up"),
        }
    }

    fn log(&self) -> String {
        match self {
            Broker::Tansu(t) => t
                .running
                .as_ref()
                .map(|b| std::fs::read_to_string(&b.log_path).unwrap_or_default())
                .unwrap_or_default(),
            Broker::Mock(_) => String::new(),
        }
    }

    async fn stop(self) {
        if let Broker::Tansu(t) = self
            && let Some(b) = t.running
        {
            b.stop(Duration::from_secs(2)).await;
        }
    }
}

/// A killed service started again at once, as an orchestrator would: while the dead member is
/// still in its group. (tansu 0.6 then settles the group with the newcomer owning nothing; the
/// consumers' group watch, common/src/kafka/group_watch.rs, sees the unowned partitions and
/// rejoins.)
async fn restarted(cfg: &KorvidConfig, command: &str, name: &'static str) -> Service {
    let mut s = Service::start(cfg, command, name);
    s.ready().await;
    s
}

/// What goes wrong in a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Faults {
    /// SIGKILL each service mid-stream, then start it again.
    KillEachService,
    /// Stop the broker mid-stream and start it again on its data.
    RestartBroker,
}

async fn faults(mut broker: Broker, faults: Faults) {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    // tansu keeps a dead member in its group until the session times out: a short timeout lets
    // a restarted service take its partitions back sooner.
    let kafka_extra = match broker {
        Broker::Mock(_) => "create_topics = false\n",
        Broker::Tansu(_) => "",
    };
    // librdkafka's mock broker, while down, was seen to let reconnects complete and then answer
    // nothing on them: a client waited out `socket.timeout.ms` (60 s by default) for its
    // request, longer than the produce timeout. A real broker refuses or resets instead.
    let socket_timeout = match broker {
        Broker::Mock(_) => "\"socket.timeout.ms\" = \"5000\"\n",
        Broker::Tansu(_) => "",
    };
    let cfg = KorvidConfig::with_kafka(dir.path(), &receiver.url, &broker.bootstrap())
        .with_kafka_extra(kafka_extra)
        .with_extra(&format!(
            "[kafka.client]\n\"max.poll.interval.ms\" = \"15000\"\n\"session.timeout.ms\" = \"6000\"\n{socket_timeout}",
        ));
    let mut services: Vec<Service> = Vec::new();
    for (command, name) in [
        ("ingest", "ingest"),
        ("enrich", "enrich"),
        ("detect", "detect"),
        ("notify", "notify"),
    ] {
        let mut s = Service::start(&cfg, command, name);
        s.ready().await;
        services.push(s);
    }
    let logs = |services: &[Service]| {
        services
            .iter()
            .map(Service::log_text)
            .collect::<Vec<_>>()
            .join("\n")
    };

    let mut sent = Sent::default();
    for _ in 0..3 {
        sent.next(&cfg).await;
    }
    // Each service in turn: killed mid-stream, input keeps coming while it is away, then an
    // orchestrator starts it again.
    let victims = if faults == Faults::KillEachService {
        0..services.len()
    } else {
        0..0
    };
    for victim in victims {
        let (command, name) = (
            ["ingest", "enrich", "detect", "notify"][victim],
            services[victim].name,
        );
        // A round in flight while the service dies (for ingest: the API server retrying).
        let in_flight = tokio::spawn(round(cfg.webhook_url(), sent.rounds));
        tokio::time::sleep(Duration::from_millis(20)).await;
        services[victim].kill_hard();
        println!("killed {name} (SIGKILL)");
        let mut pending = vec![in_flight];
        if victim != 0 {
            let r = pending.pop().expect("in flight").await.expect("round");
            sent.add(r);
            sent.next(&cfg).await;
        }
        services[victim] = restarted(&cfg, command, name).await;
        for p in pending {
            sent.add(p.await.expect("round"));
        }
        sent.next(&cfg).await;
    }

    if faults == Faults::RestartBroker {
        // The broker goes away; a round arrives while it is gone (ingest holds the requests
        // until Kafka has the events, or answers 503 and the API server retries), and the
        // broker comes back on its log; every client reconnects.
        broker.go_away().await;
        println!("broker gone");
        let in_flight = tokio::spawn(round(cfg.webhook_url(), sent.rounds));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!in_flight.is_finished(), "a round was taken without Kafka");
        broker.come_back().await;
        println!("broker back");
        sent.add(in_flight.await.expect("round"));
    }
    for _ in 0..3 {
        sent.next(&cfg).await;
    }

    // Exactly one alert per attack.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods: BTreeSet<String> = receiver
            .deliveries()
            .iter()
            .filter(|d| d.body["alert"]["rule_id"] == "KOR-0001")
            .filter_map(|d| {
                d.body["alert"]["subject"]["name"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        if pods == sent.attacks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing alerts for {:?}:\n{}\n--- broker ---\n{}",
            sent.attacks.difference(&pods).collect::<Vec<_>>(),
            logs(&services),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Whatever a killed service left uncommitted has been redone by now; none of it may alert
    // again. A notification notify had handed to the receiver but not yet recorded when it was
    // killed is sent again with the same notification id (at-least-once; receivers drop the
    // repeat by id, docs/decisions.md): that is one alert, a new id would be a second.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut per_fingerprint: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut exec_alerts = BTreeSet::new();
    let mut resent = 0;
    for d in receiver.deliveries() {
        let alert = &d.body["alert"];
        let id = d.notification_id.clone().expect("x-korvid-notification-id");
        if alert["status"] == "FIRING" {
            let fp = alert["fingerprint"].as_str().expect("fingerprint");
            resent += usize::from(
                !per_fingerprint
                    .entry(fp.to_string())
                    .or_default()
                    .insert(id.clone()),
            );
        }
        if alert["rule_id"] == "KOR-0001" {
            exec_alerts.insert(id);
        }
    }
    let twice: Vec<_> = per_fingerprint
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    assert!(twice.is_empty(), "alerts notified twice: {twice:?}");
    let mut rejoins = 0.0;
    for s in &services {
        rejoins += s.metric("korvid_kafka_group_rejoins_total").await;
    }
    println!(
        "{resent} notifications sent again with their id after a kill; the restarted services \
         rejoined a group that had left them short of partitions {rejoins} times"
    );
    let exec_alerts = exec_alerts.len();
    assert_eq!(exec_alerts, sent.attacks.len(), "one exec alert per attack");

    // Every accepted event is on the audit topic, and nothing else is.
    let bootstrap = cfg.bootstrap();
    let on_topic: BTreeSet<String> = {
        let decoder = Decoder::<AuditEvent>::new();
        read_topic(&bootstrap, "korvid.k8s.audit.v1")
            .iter()
            .filter_map(|v| decoder.decode(v).ok())
            .map(|e| e.audit_id)
            .collect()
    };
    assert_eq!(
        on_topic, sent.accepted_ids,
        "the audit topic holds what was accepted"
    );

    // Every event is in a published window, or a dead letter saying why not.
    let mut windowed: BTreeSet<String> = BTreeSet::new();
    let decoder = Decoder::<GraphWindow>::new();
    for bytes in read_topic(&bootstrap, "korvid.graph.windows.v1") {
        let w = decoder.decode(&bytes).expect("a window");
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&w.activity), None)
                .expect("activity table");
        for batch in reader {
            let batch = batch.expect("batch");
            let ids = batch
                .column_by_name("sample_event_ids")
                .expect("sample_event_ids")
                .as_string::<i32>()
                .clone();
            for i in 0..ids.len() {
                windowed.extend(ids.value(i).split(',').map(String::from));
            }
        }
    }
    let dead: Vec<DeadLetter> = {
        let decoder = Decoder::<DeadLetter>::new();
        read_topic(&bootstrap, "korvid.deadletter.v1")
            .iter()
            .filter_map(|v| decoder.decode(v).ok())
            .collect()
    };
    let late: BTreeSet<String> = dead
        .iter()
        .filter(|d| d.stage.starts_with("enrich"))
        .filter_map(|d| Decoder::<AuditEvent>::new().decode(&d.payload).ok())
        .map(|e| e.audit_id)
        .collect();
    let unaccounted: Vec<&String> = sent
        .accepted_ids
        .iter()
        .filter(|id| !windowed.contains(*id) && !late.contains(*id))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "events in no window and no dead letter: {unaccounted:?}"
    );
    let invented: Vec<&String> = windowed
        .iter()
        .filter(|id| !sent.accepted_ids.contains(*id))
        .collect();
    assert!(
        invented.is_empty(),
        "windows hold events nobody sent: {invented:?}"
    );

    // Every malformed batch is a dead letter (a batch retried across ingest's death may be
    // there twice; none is missing).
    let refused: BTreeSet<String> = dead
        .iter()
        .filter(|d| d.stage == "ingest.audit_webhook")
        .filter_map(|d| {
            let text = String::from_utf8_lossy(&d.payload);
            let at = text.find("broken-")?;
            let digits: String = text[at + 7..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some(format!("broken-{digits}"))
        })
        .collect();
    assert_eq!(
        refused, sent.malformed,
        "each malformed batch is dead-lettered"
    );
    println!(
        "{} rounds: {} attacks, {} events accepted, {} in windows, {} late, {} malformed batches dead-lettered, {} alerts",
        sent.rounds,
        sent.attacks.len(),
        sent.accepted_ids.len(),
        windowed.len(),
        late.len(),
        refused.len(),
        receiver.deliveries().len()
    );
    drop(services);
    broker.stop().await;
}
