//! The enrich loop: consume audit events, window them, publish graph windows, and store
//! offsets only for events whose window Kafka has acknowledged.

use std::time::{Duration, Instant};

use korvid_common::ServiceContext;
use korvid_common::kafka::{
    AtLeastOnceConsumer, Consumed, DeadLetterSource, DeadLetters, KafkaClientError, RecordDecoder,
    RecordProducer,
};
use korvid_schemas::{AuditEvent, GraphWindow, KubeEvent};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tracing::Instrument as _;

use crate::settings::EnrichSettings;
use crate::state::Inventories;
use crate::tables::{ActivityAggregator, TableError, touched_ids};
use crate::windows::{Admission, ClosedWindow, TopicPartition, WindowAssigner, WindowConfig};

const COMPONENT: &str = "enrich";
const STAGE: &str = "enrich.windows";

/// Why enrich stopped.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// Kafka clients could not be created.
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// The aggregation could not be planned (a bug).
    #[error("planning the activity aggregation failed: {0}")]
    Plan(#[from] TableError),
}

struct Metrics {
    events: Counter,
    late: Counter,
    duplicates: Counter,
    windows: Counter,
    panes: Counter,
    buffered: Gauge,
    /// Publication (wall clock) minus the window's end (event time).
    latency: Histogram,
    /// Building a window's tables.
    build: Histogram,
}

struct Enricher {
    consumer: AtLeastOnceConsumer,
    producer: RecordProducer,
    dead_letters: DeadLetters,
    decoder: RecordDecoder<AuditEvent>,
    kube_decoder: RecordDecoder<KubeEvent>,
    events_topic: String,
    aggregator: ActivityAggregator,
    windows: WindowAssigner,
    topic: String,
    metrics: Metrics,
    inventories: Inventories,
    /// Entities per window before it is split.
    max_nodes: usize,
    ctx: ServiceContext,
}

/// Runs enrich until shutdown, then drains: open windows are published and offsets committed.
pub async fn run(settings: EnrichSettings, ctx: ServiceContext) -> Result<(), EnrichError> {
    ctx.telemetry.declare(COMPONENT);
    let topics = &ctx.kafka.topics;
    let consumer = ctx.kafka.consumer(
        &ctx.kafka.group_id("enrich"),
        &[&topics.audit, &topics.events],
    )?;
    let producer = ctx.kafka.producer()?;
    let t = &ctx.telemetry;
    let metrics = Metrics {
        events: t.register("enrich_events", "Audit events consumed", Counter::default()),
        late: t.register(
            "enrich_late_events",
            "Events that arrived after their window was published (dead-lettered)",
            Counter::default(),
        ),
        duplicates: t.register(
            "enrich_duplicate_events",
            "Events folded into an identical auditID already in the window",
            Counter::default(),
        ),
        windows: t.register(
            "enrich_windows",
            "Graph windows published",
            Counter::default(),
        ),
        panes: t.register(
            "enrich_early_panes",
            "Early panes published: the events an open window gathered since its last pane \
             (enrich.early_fire_ms)",
            Counter::default(),
        ),
        buffered: t.register(
            "enrich_buffered_events",
            "Events held in open windows",
            Gauge::default(),
        ),
        // 50 ms .. 51 s: a window waits its size, the allowed lateness and the idle flush.
        latency: t.register(
            "enrich_window_latency_seconds",
            "Seconds from a window's end (event time) to its publication (wall clock): how long \
             its events waited for it, lateness included",
            Histogram::new(exponential_buckets(0.05, 2.0, 11)),
        ),
        // 1 ms .. 16 s.
        build: t.register(
            "enrich_window_build_seconds",
            "Seconds spent building a window's graph tables (inventory neighbourhood and \
             aggregation)",
            Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        ),
    };
    let inventories = Inventories::default();
    let follower = crate::state::follow(inventories.clone(), &ctx)?;
    let mut e = Enricher {
        inventories,
        max_nodes: settings.max_window_nodes,
        dead_letters: ctx.kafka.dead_letters(producer.clone()),
        decoder: ctx.kafka.decoder(),
        kube_decoder: ctx.kafka.decoder(),
        events_topic: topics.events.clone(),
        aggregator: ActivityAggregator::new().await?,
        windows: WindowAssigner::new(WindowConfig {
            size_ms: settings.window_ms,
            lateness_ms: settings.allowed_lateness_ms,
            idle_flush: Duration::from_millis(settings.idle_flush_ms),
            early_fire: (settings.early_fire_ms != 0)
                .then(|| Duration::from_millis(settings.early_fire_ms)),
            max_buffered: settings.max_buffered_events,
        }),
        topic: topics.windows.clone(),
        consumer,
        producer,
        metrics,
        ctx: ctx.clone(),
    };
    ctx.telemetry.set_ready(COMPONENT, true);
    let mut tick = tokio::time::interval(
        Duration::from_millis(match settings.early_fire_ms {
            0 => settings.idle_flush_ms / 2,
            early => settings.idle_flush_ms.min(early) / 2,
        })
        .clamp(Duration::from_millis(20), Duration::from_millis(250)),
    );
    let full_every = Duration::from_millis(if settings.full_window_ms == 0 {
        u64::MAX / 4
    } else {
        settings.full_window_ms
    });
    let mut full_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + full_every, full_every);
    let mut last_full = korvid_common::now_millis();
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                let due = e.windows.due(Instant::now());
                e.publish(due).await;
            }
            _ = full_tick.tick(), if settings.full_window_ms != 0 => {
                let now = korvid_common::now_millis();
                e.publish_full(last_full, now, settings.max_window_nodes).await;
                last_full = now;
            }
            msg = e.consumer.next(&ctx.shutdown) => match msg {
                Some(m) => e.handle(m).await,
                None => break,
            }
        }
        let lost = e.consumer.take_revoked();
        e.windows.revoke(&lost);
        e.store_offsets();
        e.metrics.buffered.set(e.windows.buffered() as i64);
    }
    // Drain: publish what is open, store and commit.
    let open = e.windows.flush_all();
    e.publish(open).await;
    e.store_offsets();
    let _ = e.producer.flush(Duration::from_secs(5));
    e.consumer.finish();
    follower.abort();
    tracing::info!("enrich stopped");
    Ok(())
}

impl Enricher {
    async fn handle(&mut self, msg: Consumed) {
        self.metrics.events.inc();
        let tp: TopicPartition = (msg.topic.clone(), msg.partition);
        let offset = msg.offset;
        let source = msg.source();
        let Some(bytes) = msg.payload else {
            self.windows.mark_done(&tp, offset);
            return;
        };
        let decoded = if msg.topic == self.events_topic {
            self.kube_decoder
                .decode(&bytes)
                .await
                .map(|ev| crate::tables::window_event(&ev))
        } else {
            self.decoder.decode(&bytes).await
        };
        let event = match decoded {
            Ok(ev) => ev,
            Err(err) => {
                self.reject(&err.to_string(), err.kind(), &bytes, source)
                    .await;
                self.windows.mark_done(&tp, offset);
                return;
            }
        };
        let key = format!(
            "{}/{}",
            event.cluster,
            event.namespace.as_deref().unwrap_or("_cluster")
        );
        match self.windows.admit(
            &key,
            event,
            &tp,
            offset,
            Instant::now(),
            msg.trace_parent.as_deref(),
        ) {
            Admission::Buffered => {}
            Admission::Duplicate => {
                self.metrics.duplicates.inc();
            }
            Admission::Late {
                window_end,
                emitted_until,
            } => {
                self.metrics.late.inc();
                let why = format!(
                    "event for window ending {window_end} arrived after windows of {key} were published up to {emitted_until} (beyond enrich.allowed_lateness_ms)"
                );
                self.reject(&why, "late_event", &bytes, source).await;
            }
        }
    }

    async fn reject(&self, why: &str, kind: &str, bytes: &[u8], source: DeadLetterSource) {
        // Dead letters must not be lost either: retry until Kafka takes them or we stop.
        let mut backoff = Duration::from_millis(200);
        while let Err(err) = self
            .dead_letters
            .send(STAGE, kind, why, bytes, source.clone())
            .await
        {
            if self.ctx.shutdown.is_triggered() {
                tracing::error!(error = %err, "dead letter not written before shutdown; the input will be re-read");
                return;
            }
            tracing::warn!(error = %err, "dead letter not written; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Builds the closed windows, queues all their records, then waits for Kafka's
    /// acknowledgements together: one round trip per call, not one per window (a slow broker's
    /// acknowledgement would otherwise hold the consumer once for every window).
    #[tracing::instrument(name = "enrich.publish", skip_all, fields(windows = closed.len()))]
    async fn publish(&mut self, closed: Vec<ClosedWindow>) {
        let mut queued = Vec::with_capacity(closed.len());
        for w in closed {
            let Some(records) = self.build(&w).await else {
                self.windows.published(&w.offsets);
                continue;
            };
            // The window continues its first event's trace and links the others'.
            let span = korvid_common::trace_context::span_after(
                tracing::info_span!("enrich.window", key = %w.key, events = w.events.len(), early = w.early),
                w.traces.first().map(String::as_str),
            );
            for t in w.traces.iter().skip(1) {
                korvid_common::trace_context::link(&span, t);
            }
            let mut pending = Vec::with_capacity(records.len());
            for record in &records {
                let queued = self
                    .producer
                    .enqueue(&self.topic, &record.partition_key, record)
                    .instrument(span.clone())
                    .await;
                pending.push(queued);
            }
            queued.push((w, records, span, pending));
        }
        let acknowledged = futures::future::join_all(queued.into_iter().map(
            |(w, records, span, pending)| async move {
                let mut failed = Vec::new();
                let mut delivered_count = 0u64;
                for (record, queued) in records.into_iter().zip(pending) {
                    let delivered = match queued {
                        Ok(p) => p.acknowledged().await,
                        Err(e) => Err(e),
                    };
                    match delivered {
                        Ok(_) => {
                            delivered_count += 1;
                            tracing::debug!(window = %record.window_id, key = %record.partition_key, events = record.event_count, split = record.split_index, "window published");
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "publishing a window failed; retrying");
                            failed.push(record);
                        }
                    }
                }
                (w, span, failed, delivered_count)
            },
        ))
        .await;
        for (w, span, failed, delivered_count) in acknowledged {
            self.metrics.windows.inc_by(delivered_count);
            let mut all_published = true;
            for record in &failed {
                if !self.send_window(record).instrument(span.clone()).await {
                    all_published = false;
                    break;
                }
            }
            // Offsets move only once every part is in Kafka; a replay rebuilds the same ids.
            // An early pane has none: the window's final publication releases them.
            if all_published && w.early {
                self.metrics.panes.inc();
            } else if all_published {
                self.windows.published(&w.offsets);
                // A window published before its end (idle flush) kept nobody waiting.
                let waited_ms = (korvid_common::now_millis() - w.end).max(0);
                self.metrics.latency.observe(waited_ms as f64 / 1000.0);
            }
        }
    }

    /// Builds a window's graph tables into records; `None` (after dead-lettering the window's
    /// audit ids) when building failed, which is a bug, not bad input.
    async fn build(&mut self, w: &ClosedWindow) -> Option<Vec<GraphWindow>> {
        let namespace = w.key.split_once('/').map_or("", |(_, ns)| ns);
        let namespace = if namespace == "_cluster" {
            ""
        } else {
            namespace
        };
        let building = Instant::now();
        let around = self
            .inventories
            .around(&w.cluster, namespace, &touched_ids(&w.events));
        let built = self
            .aggregator
            .graph_windows(w, around.as_ref(), self.max_nodes)
            .await;
        self.metrics.build.observe(building.elapsed().as_secs_f64());
        match built {
            Ok(records) => Some(records),
            Err(err) => {
                tracing::error!(error = %err, key = %w.key, "building a graph window failed");
                let ids = w
                    .events
                    .iter()
                    .map(|e| e.audit_id.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                self.reject(
                    &err.to_string(),
                    "window_build",
                    ids.as_bytes(),
                    DeadLetterSource {
                        cluster: Some(w.cluster.clone()),
                        ..Default::default()
                    },
                )
                .await;
                None
            }
        }
    }

    /// Sends one window, retrying until Kafka takes it; `false` when shutdown came first.
    async fn send_window(&mut self, record: &GraphWindow) -> bool {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self
                .producer
                .send(&self.topic, &record.partition_key, record)
                .await
            {
                Ok(_) => {
                    self.metrics.windows.inc();
                    tracing::debug!(window = %record.window_id, key = %record.partition_key, events = record.event_count, split = record.split_index, "window published");
                    return true;
                }
                Err(err) if !self.ctx.shutdown.is_triggered() => {
                    tracing::warn!(error = %err, "publishing a window failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    tracing::error!(error = %err, "window not published before shutdown; its events will be re-read");
                    return false;
                }
            }
        }
    }

    /// Publishes a window of each cluster's whole inventory.
    async fn publish_full(&mut self, since: i64, now: i64, max_nodes: usize) {
        for (cluster, graph) in self.inventories.graphs() {
            let windows = match crate::tables::full_windows(&cluster, &graph, since, now, max_nodes)
            {
                Ok(w) => w,
                Err(err) => {
                    tracing::error!(error = %err, %cluster, "building a full window failed");
                    continue;
                }
            };
            for w in windows {
                // Best effort: the next full window covers the same ground.
                match self.producer.send(&self.topic, &w.partition_key, &w).await {
                    Ok(_) => {
                        self.metrics.windows.inc();
                    }
                    Err(err) => tracing::warn!(error = %err, %cluster, "full window not published"),
                }
            }
        }
    }

    fn store_offsets(&mut self) {
        for ((topic, partition), offset) in self.windows.committable() {
            if let Err(err) = self.consumer.store(&topic, partition, offset) {
                tracing::warn!(error = %err, "storing an offset failed");
            }
        }
    }
}
