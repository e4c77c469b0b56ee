//! The notify loop: restore alert state for the partitions this instance owns, fold each
//! finding into its alert, run the grouping timers, route each notification to its sinks, and
//! only then store the finding's offset.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use korvid_common::ServiceContext;
use korvid_common::kafka::{
    DeadLetterSource, DeadLetters, KafkaClientError, PendingDelivery, RecordProducer,
};
use korvid_schemas::codec::Decoder;
use korvid_schemas::{Alert, DedupState, Finding};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::engine::{Change, Engine, Flush, Observed, StateWrite};
use crate::order::EventTimeMerge;
use crate::policy::{Policy, PolicyError};
use crate::settings::{Clock, NotifySettings};
use crate::sinks::worker::{SinkHandle, SinkMetrics, Undelivered};
use crate::sinks::{Delivery, Shape, SinkError};

const COMPONENT: &str = "notify";
const STAGE: &str = "notify";
/// How long shutdown waits for sinks to drain before dead-lettering what is left.
const DRAIN: Duration = Duration::from_secs(3);

/// Why notify stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// State or a dead letter was not acknowledged; the finding stays uncommitted.
    #[error("stopped without committing: {0}")]
    Unacknowledged(String),
    /// Kafka clients could not be created or the state could not be read.
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// A sink could not be built.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The grouping clock.
struct TimerClock {
    kind: Clock,
    idle_ms: i64,
    watermark: i64,
    moved: std::time::Instant,
}

impl TimerClock {
    fn new(kind: Clock, idle_ms: i64, resume_at: Option<i64>) -> Self {
        TimerClock {
            kind,
            idle_ms,
            watermark: resume_at.unwrap_or(0),
            moved: std::time::Instant::now(),
        }
    }

    fn saw(&mut self, event_time: i64) {
        if event_time > self.watermark {
            self.watermark = event_time;
            self.moved = std::time::Instant::now();
        }
    }

    fn now(&self) -> i64 {
        match self.kind {
            Clock::Wall => korvid_common::now_millis(),
            Clock::Findings => {
                let idle = self.moved.elapsed().as_millis() as i64 - self.idle_ms;
                self.watermark + idle.max(0)
            }
        }
    }
}

struct Metrics {
    decisions: Family<Vec<(String, String)>, Counter>,
    notifications: Family<Vec<(String, String)>, Counter>,
    /// An alert's first hand-over to its sinks minus the opening finding's event time.
    event_to_alert: Histogram,
}

impl Metrics {
    fn decision(&self, d: &str) {
        self.decisions
            .get_or_create(&vec![("decision".into(), d.into())])
            .inc();
    }
}

/// The routed, grouped side of notify: where flushes go.
struct Dispatcher {
    policy: Policy,
    sinks: HashMap<String, SinkHandle>,
    /// `traceparent` of each open alert's latest finding.
    traces: PerAlert<String>,
    /// Event time of the finding that opened each alert, until its first hand-over.
    openings: PerAlert<i64>,
}

/// A value per open alert, in memory only and bounded: the trace context of its latest finding
/// (so the notification continues the trace from the audit event) or the event time of the
/// finding that opened its episode (for the event-to-alert histogram). After a restart both
/// start fresh.
struct PerAlert<T>(std::sync::Mutex<HashMap<String, T>>);

impl<T> Default for PerAlert<T> {
    fn default() -> Self {
        PerAlert(std::sync::Mutex::default())
    }
}

/// Alerts remembered at most; past it the memory starts over.
const MAX_REMEMBERED_ALERTS: usize = 100_000;

impl<T: Clone> PerAlert<T> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, T>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, fingerprint: &str, value: T) {
        let mut m = self.map();
        if m.len() >= MAX_REMEMBERED_ALERTS && !m.contains_key(fingerprint) {
            m.clear();
        }
        m.insert(fingerprint.to_string(), value);
    }

    /// The value, forgotten once asked for.
    fn take(&self, fingerprint: &str) -> Option<T> {
        self.map().remove(fingerprint)
    }

    /// The value of the first of `alerts` that has one; resolved alerts are forgotten.
    fn for_delivery(&self, alerts: &[Alert]) -> Option<T> {
        let mut m = self.map();
        let found = alerts.iter().find_map(|a| m.get(&a.fingerprint).cloned());
        for a in alerts {
            if a.status == korvid_schemas::AlertStatus::Resolved {
                m.remove(&a.fingerprint);
            }
        }
        found
    }
}

impl Dispatcher {
    fn dispatch(&self, flush: &Flush, metrics: &Metrics) {
        let mut per_sink: HashMap<&str, Vec<(Alert, Change)>> = HashMap::new();
        let now = korvid_common::now_millis();
        for (alert, change) in &flush.alerts {
            let mut routed = false;
            for sink in self.policy.sinks_for_alert(alert) {
                if let Some((name, _)) = self.sinks.get_key_value(&sink) {
                    routed = true;
                    per_sink
                        .entry(name.as_str())
                        .or_default()
                        .push((alert.clone(), *change));
                }
            }
            match change {
                // A new alert goes to every sink it is routed to, whatever their shape: this
                // is its first hand-over.
                Change::New => {
                    if let Some(event_time) = self.openings.take(&alert.fingerprint)
                        && routed
                    {
                        let waited_ms = (now - event_time).max(0);
                        metrics.event_to_alert.observe(waited_ms as f64 / 1000.0);
                    }
                }
                Change::Resolved => {
                    self.openings.take(&alert.fingerprint);
                }
                Change::Repeat | Change::Unchanged => {}
            }
        }
        for (name, alerts) in per_sink {
            let handle = &self.sinks[name];
            let send: Vec<Alert> = match handle.shape() {
                // People see the whole group whenever something in it changed.
                Shape::Grouped if alerts.iter().any(|(_, c)| *c != Change::Unchanged) => {
                    alerts.into_iter().map(|(a, _)| a).collect()
                }
                Shape::Grouped => continue,
                // Machines get what changed (and reminders on repeat).
                Shape::PerAlert => alerts
                    .into_iter()
                    .filter(|(_, c)| *c != Change::Unchanged)
                    .map(|(a, _)| a)
                    .collect(),
            };
            if send.is_empty() {
                continue;
            }
            metrics
                .notifications
                .get_or_create(&vec![("sink".into(), name.to_string())])
                .inc();
            let trace = self.traces.for_delivery(&send);
            handle.offer_traced(
                Delivery {
                    group: flush.group.clone(),
                    alerts: send,
                },
                trace,
            );
        }
    }
}

/// Reads the state topic to its end: the latest state per fingerprint.
async fn read_states(
    ctx: &ServiceContext,
    topic: &str,
) -> Result<HashMap<String, DedupState>, KafkaClientError> {
    let decoder = Decoder::<DedupState>::new();
    let mut latest = HashMap::new();
    for (key, value) in ctx.kafka.read_to_end(topic).await? {
        let key = key.map(|k| String::from_utf8_lossy(&k).into_owned());
        match value.map(|v| decoder.decode(&v)) {
            Some(Ok(s)) => {
                latest.insert(s.fingerprint.clone(), s);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "unreadable alert state record skipped"),
            None => {
                if let Some(k) = key {
                    latest.remove(&k);
                }
            }
        }
    }
    Ok(latest)
}

/// Runs notify until shutdown.
pub async fn run(settings: NotifySettings, ctx: ServiceContext) -> Result<(), NotifyError> {
    ctx.telemetry.declare(COMPONENT);
    let topics = ctx.kafka.topics.clone();
    let producer = ctx.kafka.producer()?;
    let dead_letters = ctx.kafka.dead_letters(producer.clone());
    let t = &ctx.telemetry;

    let now = korvid_common::now_millis();
    let policy = match &settings.policy {
        Some(path) => Policy::load(path, &settings.sink_names(), settings.min_severity(), now)?,
        None => Policy::default_for(&settings.sink_names(), settings.min_severity()),
    };
    for e in policy.exceptions.expired(now) {
        tracing::warn!(exception = %e.name, owner = %e.owner, reason = %e.reason, "exception expired; it no longer applies");
    }
    for s in policy.expired_silences(now) {
        tracing::warn!(silence = %s.name, owner = %s.owner, "silence expired; it no longer applies");
    }

    let sink_metrics = SinkMetrics::default();
    t.register(
        "notify_sink_requests",
        "Requests to sinks, by sink and result (ok, retry, refused, partial)",
        sink_metrics.requests.clone(),
    );
    t.register(
        "notify_sink_alerts",
        "Alerts by sink and outcome (delivered, dead_letter)",
        sink_metrics.alerts.clone(),
    );
    t.register(
        "notify_sink_queued",
        "Deliveries waiting in each sink's queue",
        sink_metrics.queued.clone(),
    );
    t.register(
        "notify_sink_breaker_open",
        "1 while a sink's circuit breaker is open",
        sink_metrics.breaker_open.clone(),
    );
    t.register(
        "notify_sink_delivery_seconds",
        "Seconds per request to a sink (every attempt, whatever its outcome), by sink",
        sink_metrics.delivery_seconds.clone(),
    );
    let metrics = Metrics {
        decisions: t.register(
            "notify_findings",
            "Findings handled, by decision (notify = new alert, suppress = folded into an open alert, replay, excepted, below_min_severity)",
            Family::default(),
        ),
        notifications: t.register(
            "notify_notifications",
            "Notifications handed to sinks, by sink",
            Family::default(),
        ),
        // 100 ms .. 410 s: windowing, detection and group_wait (250 ms by default) add up.
        event_to_alert: t.register(
            "notify_event_to_alert_seconds",
            "Seconds from the event time of the finding that opened an alert to the alert's \
             first hand-over to its sinks",
            Histogram::new(exponential_buckets(0.1, 2.0, 13)),
        ),
    };

    let (undelivered_tx, undelivered_rx) = mpsc::unbounded_channel();
    let (hurry_tx, hurry_rx) = tokio::sync::watch::channel(false);
    let built = crate::sinks::build::all(&settings, &producer, &topics.alerts)?;
    let mut handles = HashMap::new();
    let mut workers = Vec::new();
    for (sink, delivery) in built {
        let (handle, join) = crate::sinks::worker::spawn(
            sink,
            delivery,
            sink_metrics.clone(),
            undelivered_tx.clone(),
            hurry_rx.clone(),
        );
        handles.insert(handle.name().to_string(), handle);
        workers.push(join);
    }
    drop(undelivered_tx);
    let dead_letter_task = tokio::spawn(dead_letter_undelivered(
        undelivered_rx,
        dead_letters.clone(),
    ));
    let dispatcher = Dispatcher {
        policy,
        sinks: handles,
        traces: PerAlert::default(),
        openings: PerAlert::default(),
    };

    // What earlier runs (or other instances) already notified; adopted per partition once the
    // group assigns this instance its partitions.
    let restored = read_states(&ctx, &topics.notify_state).await?;
    tracing::info!(fingerprints = restored.len(), "dedup state restored");
    let mut engine = Engine::new(settings.grouping());
    let mut clock = TimerClock::new(
        settings.clock,
        settings.idle_ms,
        restored
            .values()
            .map(|s| s.last_seen.max(s.last_notified))
            .max(),
    );
    let mut pending_restore = Some(restored);

    let consumer = ctx
        .kafka
        .consumer(&ctx.kafka.group_id("notify"), &[&topics.findings])?;
    let mut decoder = ctx.kafka.decoder::<Finding>();
    ctx.telemetry.set_ready(COMPONENT, true);

    let mut tick = tokio::time::interval(Duration::from_millis(settings.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let by_finding_time = settings.clock == Clock::Findings;
    let mut merge = EventTimeMerge::new(Duration::from_millis(settings.idle_ms as u64));
    let mut failure = None;
    let mut owned: BTreeSet<i32> = BTreeSet::new();
    let mut loop_ = Loop {
        engine: &mut engine,
        dispatcher: &dispatcher,
        metrics: &metrics,
        producer: &producer,
        state_topic: &topics.notify_state,
        dead_letters: &dead_letters,
        pending: Vec::new(),
        handled: Vec::new(),
    };
    loop {
        // Ownership first: a new partition's states are adopted before its first finding.
        match follow_assignment(
            &ctx,
            &consumer,
            &topics.notify_state,
            loop_.engine,
            &mut owned,
            &mut pending_restore,
        )
        .await
        {
            Ok(true) => merge.assign(&owned),
            Ok(false) => {}
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
        let waiting = !loop_.handled.is_empty() || !loop_.pending.is_empty();
        // On the wall clock a group is notified when it falls due, not at the next tick (which
        // added up to `tick_ms` to every first alert); the findings clock only moves with
        // findings, so there the tick stays. At least 1 ms: a group is rescheduled past `now`.
        let due_in = match loop_.engine.next_due() {
            Some(due) if !by_finding_time => {
                Some(Duration::from_millis((due - clock.now()).max(1) as u64))
            }
            _ => None,
        };
        let msg = tokio::select! {
            biased;
            m = consumer.next(&ctx.shutdown) => match m {
                Some(m) => Some(m),
                None => break,
            },
            _ = tick.tick() => None,
            _ = tokio::time::sleep(due_in.unwrap_or_default()), if due_in.is_some() => None,
            // Nothing more right now: settle what was handled.
            _ = tokio::time::sleep(Duration::from_millis(2)), if waiting => None,
        };
        let idle = msg.is_none();
        let result = match msg {
            None => Ok(()),
            Some(msg) => {
                let decoded = match &msg.payload {
                    Some(bytes) => {
                        Some(decoder.decode(bytes).await.map_err(|e| (e, bytes.clone())))
                    }
                    None => None,
                };
                if by_finding_time {
                    // Undecodable records keep their place in line so offsets stay in order.
                    let time = match &decoded {
                        Some(Ok(f)) => f.event_time,
                        _ => i64::MIN,
                    };
                    merge.push(msg.partition, time, (decoded, msg));
                    Ok(())
                } else {
                    let r = loop_.one(decoded, &msg, clock.now()).await;
                    loop_.handled.push(msg);
                    r
                }
            }
        };
        // Released in time order (findings clock), then the timers.
        let result = async {
            result?;
            // A bounded share per turn, so reading goes on and a partition is never judged
            // quiet because handling the others kept us from reading it.
            let mut released = 0;
            while released < ACK_BATCH
                && let Some((_, (decoded, msg))) = merge.pop_ready()
            {
                released += 1;
                if let Some(Ok(f)) = &decoded {
                    clock.saw(f.event_time);
                }
                loop_.one(decoded, &msg, clock.now()).await?;
                loop_.handled.push(msg);
            }
            loop_.timers(clock.now()).await?;
            if idle || loop_.full() {
                loop_.settle(&consumer).await?;
            }
            Ok::<(), KafkaClientError>(())
        }
        .await;
        if let Err(e) = result {
            // State or dead letter not acknowledged: keep the offset so the finding is
            // handled again after a restart (replays are recognised).
            tracing::error!(error = %e, "finding not fully handled; stopping without committing it");
            failure = Some(e.to_string());
            break;
        }
    }
    if failure.is_none()
        && let Err(e) = loop_.settle(&consumer).await
    {
        failure = Some(e.to_string());
    }
    if !merge.is_empty() {
        tracing::info!(
            waiting = merge.len(),
            "findings still waiting for other partitions are left uncommitted"
        );
    }

    // Drain: let the sinks finish what is queued, then dead-letter the rest.
    drop(dispatcher);
    let all_workers = futures::future::join_all(workers);
    tokio::pin!(all_workers);
    if tokio::time::timeout(DRAIN, &mut all_workers).await.is_err() {
        tracing::warn!("sinks still busy at shutdown; dead-lettering what they hold");
        let _ = hurry_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut all_workers).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), dead_letter_task).await;
    let _ = producer.flush(Duration::from_secs(5));
    consumer.finish();
    if let Some(why) = failure {
        return Err(NotifyError::Unacknowledged(why));
    }
    tracing::info!("notify stopped");
    Ok(())
}

/// Adopts the states of newly assigned partitions and forgets revoked ones.
async fn follow_assignment(
    ctx: &ServiceContext,
    consumer: &korvid_common::kafka::AtLeastOnceConsumer,
    state_topic: &str,
    engine: &mut Engine,
    owned: &mut BTreeSet<i32>,
    pending_restore: &mut Option<HashMap<String, DedupState>>,
) -> Result<bool, KafkaClientError> {
    let revoked: Vec<i32> = consumer
        .take_revoked()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if !revoked.is_empty() {
        engine.drop_partitions(&revoked);
        for p in &revoked {
            owned.remove(p);
        }
    }
    let Some(latest) = consumer.take_assigned().pop() else {
        return Ok(!revoked.is_empty());
    };
    let now_owned: BTreeSet<i32> = latest.into_iter().map(|(_, p)| p).collect();
    let gone: Vec<i32> = owned.difference(&now_owned).copied().collect();
    engine.drop_partitions(&gone);
    let new: BTreeSet<i32> = now_owned.difference(owned).copied().collect();
    *owned = now_owned;
    if new.is_empty() {
        return Ok(true);
    }
    // The first assignment uses the states read at start; later ones re-read, since another
    // instance owned those partitions meanwhile.
    let states = match pending_restore.take() {
        Some(s) => s,
        None => read_states(ctx, state_topic).await?,
    };
    let unreadable = engine.restore(states.into_values(), Some(&new));
    tracing::info!(partitions = ?new, alerts = engine.len(), unreadable, "alert state adopted");
    Ok(true)
}

/// What handling a finding needs.
struct Loop<'a> {
    engine: &'a mut Engine,
    dispatcher: &'a Dispatcher,
    metrics: &'a Metrics,
    producer: &'a RecordProducer,
    state_topic: &'a str,
    dead_letters: &'a DeadLetters,
    /// State writes on the producer's queue, not yet acknowledged.
    pending: Vec<PendingDelivery>,
    /// Records handled whose offsets wait for those acknowledgements.
    handled: Vec<korvid_common::kafka::Consumed>,
}

/// Records handled before the state writes are awaited together (one round trip for many).
const ACK_BATCH: usize = 512;

type Decoded = Option<Result<Finding, (KafkaClientError, Vec<u8>)>>;

impl Loop<'_> {
    /// Handles one consumed record at `now`: a finding, or a dead letter.
    async fn one(
        &mut self,
        decoded: Decoded,
        msg: &korvid_common::kafka::Consumed,
        now: i64,
    ) -> Result<(), KafkaClientError> {
        match decoded {
            None => Ok(()),
            Some(Ok(f)) => {
                let span = korvid_common::trace_context::span_after(
                    tracing::info_span!("notify.finding", fingerprint = %f.fingerprint),
                    msg.trace_parent.as_deref(),
                );
                self.finding(&f, msg.partition, now).instrument(span).await
            }
            Some(Err((e, bytes))) => self
                .dead_letters
                .send(STAGE, e.kind(), &e.to_string(), &bytes, msg.source())
                .await
                .map(drop),
        }
    }

    /// Runs the timers due by `now`: notifications to the sinks, their state queued.
    async fn timers(&mut self, now: i64) -> Result<(), KafkaClientError> {
        let (flushes, writes) = self.engine.advance(now, &self.dispatcher.policy);
        for flush in &flushes {
            self.dispatcher.dispatch(flush, self.metrics);
        }
        for w in writes {
            let queued = match w {
                StateWrite::Put(s) => {
                    self.producer
                        .enqueue(self.state_topic, &s.fingerprint, &s)
                        .await?
                }
                StateWrite::Delete(fp) => {
                    self.producer
                        .enqueue_tombstone(self.state_topic, &fp)
                        .await?
                }
            };
            self.pending.push(queued);
        }
        Ok(())
    }

    /// Whether enough is waiting to settle now.
    fn full(&self) -> bool {
        self.handled.len() >= ACK_BATCH || self.pending.len() >= ACK_BATCH
    }

    /// Waits for every queued state write, then stores the offsets of what was handled.
    async fn settle(
        &mut self,
        consumer: &korvid_common::kafka::AtLeastOnceConsumer,
    ) -> Result<(), KafkaClientError> {
        for p in self.pending.drain(..) {
            p.acknowledged().await?;
        }
        for msg in self.handled.drain(..) {
            consumer.done(&msg);
        }
        Ok(())
    }

    async fn finding(
        &mut self,
        f: &Finding,
        partition: i32,
        now: i64,
    ) -> Result<(), KafkaClientError> {
        // Timers due before this finding run first, at their own times.
        self.timers(now).await?;
        let policy = &self.dispatcher.policy;
        if f.severity < policy.route.min_severity {
            self.metrics.decision("below_min_severity");
            return Ok(());
        }
        if let Some(e) = policy.exceptions.covering(f, korvid_common::now_millis()) {
            tracing::debug!(exception = %e.name, "finding excepted by policy");
            self.metrics.decision("excepted");
            return Ok(());
        }
        let observed = self.engine.observe(f, partition, now);
        if !matches!(observed, Observed::Replay)
            && let Some(tp) = korvid_common::trace_context::current()
        {
            self.dispatcher.traces.remember(&f.fingerprint, tp);
        }
        if matches!(observed, Observed::New(_)) {
            self.dispatcher
                .openings
                .remember(&f.fingerprint, f.event_time);
        }
        self.metrics.decision(match observed {
            Observed::Replay => "replay",
            Observed::New(_) => "notify",
            Observed::Folded(_) => "suppress",
        });
        if let Some(state) = observed.state() {
            let queued = self
                .producer
                .enqueue(self.state_topic, &state.fingerprint, state)
                .await?;
            self.pending.push(queued);
        }
        self.timers(now).await
    }
}

/// Writes what sinks gave up on to the dead-letter topic, one record per alert.
async fn dead_letter_undelivered(mut rx: mpsc::UnboundedReceiver<Undelivered>, dl: DeadLetters) {
    while let Some(u) = rx.recv().await {
        for alert in &u.alerts {
            let body = serde_json::to_vec(&crate::sinks::webhook_body(alert)).unwrap_or_default();
            if let Err(e) = dl
                .send(
                    &format!("notify.sink.{}", u.sink),
                    u.kind,
                    &u.reason,
                    &body,
                    DeadLetterSource {
                        cluster: Some(alert.cluster.clone()),
                        ..Default::default()
                    },
                )
                .await
            {
                tracing::error!(sink = %u.sink, alert = %alert.id, error = %e, "dead letter not written; the alert is lost");
            }
        }
    }
}
