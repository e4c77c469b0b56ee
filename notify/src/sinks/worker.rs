//! The reliability every sink gets: a bounded queue, a rate limit, retries with exponential
//! backoff and full jitter, a circuit breaker and a dead letter.
//!
//! One worker task per sink. [`SinkHandle::offer`] never waits: when the queue is full the
//! delivery is dead-lettered at once, so a slow or dead receiver cannot hold up the notify loop
//! or any other sink. A delivery is retried until it succeeds, is refused, or has waited longer
//! than `give_up_after_ms`; a receiver that keeps failing opens the breaker, which stops
//! attempts until `breaker_cooldown_ms` has passed and then lets one probe through.

use std::sync::Arc;
use std::time::Duration;

use korvid_schemas::Alert;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{Delivery, SendError, Sink};

/// How one sink is driven.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Deliveries waiting for this sink before new ones are dead-lettered.
    pub queue: usize,
    /// Requests per second (0 = no limit). Slack allows 1 per second per channel.
    pub rate_per_second: f64,
    /// Requests allowed at once above the rate, after a quiet spell.
    pub burst: u32,
    /// First retry delay; doubled per attempt (with full jitter) up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Longest retry delay.
    pub max_backoff_ms: u64,
    /// A delivery still failing this long after it was queued goes to the dead-letter topic.
    pub give_up_after_ms: u64,
    /// Consecutive failed requests that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe request.
    pub breaker_cooldown_ms: u64,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// Requests before a delivery is dead-lettered (0: as many as `give_up_after_ms` allows).
    pub max_attempts: u32,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            queue: 10_000,
            rate_per_second: 0.0,
            burst: 10,
            initial_backoff_ms: 250,
            max_backoff_ms: 30_000,
            give_up_after_ms: 15 * 60 * 1000,
            breaker_failures: 5,
            breaker_cooldown_ms: 15_000,
            timeout_ms: 10_000,
            max_attempts: 0,
        }
    }
}

impl DeliverySettings {
    /// Checks ranges; `key` is the settings path of the sink.
    pub fn validate(&self, key: &str) -> Result<(), korvid_common::settings::SettingsError> {
        use korvid_common::settings::require_range;
        let k = |f: &str| format!("{key}.delivery.{f}");
        require_range(&k("queue"), self.queue, 1, 10_000_000)?;
        if !(0.0..=100_000.0).contains(&self.rate_per_second) {
            return Err(korvid_common::settings::SettingsError::invalid(
                k("rate_per_second"),
                format!("{} is not between 0 and 100000", self.rate_per_second),
            ));
        }
        require_range(&k("burst"), self.burst, 1, 100_000)?;
        require_range(
            &k("initial_backoff_ms"),
            self.initial_backoff_ms,
            1,
            600_000,
        )?;
        require_range(
            &k("max_backoff_ms"),
            self.max_backoff_ms,
            self.initial_backoff_ms,
            3_600_000,
        )?;
        require_range(
            &k("give_up_after_ms"),
            self.give_up_after_ms,
            0,
            7 * 86_400_000,
        )?;
        require_range(&k("breaker_failures"), self.breaker_failures, 1, 1_000)?;
        require_range(
            &k("breaker_cooldown_ms"),
            self.breaker_cooldown_ms,
            1,
            3_600_000,
        )?;
        require_range(&k("timeout_ms"), self.timeout_ms, 100, 600_000)?;
        require_range(&k("max_attempts"), self.max_attempts, 0, 1_000)?;
        Ok(())
    }
}

/// Alerts a sink gave up on, for the service to write to the dead-letter topic.
#[derive(Debug)]
pub struct Undelivered {
    /// Sink name.
    pub sink: String,
    /// `refused`, `gave_up`, `queue_full` or `shutdown`.
    pub kind: &'static str,
    /// The last error.
    pub reason: String,
    /// The alerts.
    pub alerts: Vec<Alert>,
}

/// Histograms by sink, each made with the same buckets.
pub type SinkHistograms = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

/// Per-sink metrics, shared by all workers (labels: sink and result).
#[derive(Clone)]
pub struct SinkMetrics {
    /// Requests by sink and result (`ok`, `retry`, `refused`).
    pub requests: Family<Vec<(String, String)>, Counter>,
    /// Alerts by sink and outcome (`delivered`, `dead_letter`).
    pub alerts: Family<Vec<(String, String)>, Counter>,
    /// Deliveries waiting, by sink.
    pub queued: Family<Vec<(String, String)>, Gauge>,
    /// 1 while the sink's breaker is open.
    pub breaker_open: Family<Vec<(String, String)>, Gauge>,
    /// Seconds per request (every attempt, whatever its outcome), by sink.
    pub delivery_seconds: SinkHistograms,
}

impl Default for SinkMetrics {
    fn default() -> Self {
        SinkMetrics {
            requests: Family::default(),
            alerts: Family::default(),
            queued: Family::default(),
            breaker_open: Family::default(),
            delivery_seconds: Family::new_with_constructor(delivery_histogram),
        }
    }
}

/// 5 ms .. 41 s: a sink's request takes at most its `timeout_ms` (10 s by default).
fn delivery_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl SinkMetrics {
    fn count(family: &Family<Vec<(String, String)>, Counter>, sink: &str, what: &str, n: u64) {
        family
            .get_or_create(&vec![
                ("sink".into(), sink.to_string()),
                ("result".into(), what.to_string()),
            ])
            .inc_by(n);
    }

    fn gauge(family: &Family<Vec<(String, String)>, Gauge>, sink: &str) -> Gauge {
        family
            .get_or_create(&vec![("sink".into(), sink.to_string())])
            .clone()
    }
}

struct Queued {
    delivery: Delivery,
    since: Instant,
    /// The trace the delivery continues (`traceparent` of the finding that caused it).
    trace: Option<String>,
}

/// The notify loop's end of one sink's queue.
#[derive(Clone)]
pub struct SinkHandle {
    name: String,
    shape: super::Shape,
    tx: mpsc::Sender<Queued>,
    undelivered: mpsc::UnboundedSender<Undelivered>,
    queued: Gauge,
}

impl SinkHandle {
    /// Sink name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the sink takes groups or alerts.
    pub fn shape(&self) -> super::Shape {
        self.shape
    }

    /// Queues a delivery without waiting; a full queue dead-letters it.
    pub fn offer(&self, delivery: Delivery) {
        self.offer_traced(delivery, None);
    }

    /// [`offer`](Self::offer), the send continuing the trace of `trace` (a `traceparent`).
    pub fn offer_traced(&self, delivery: Delivery, trace: Option<String>) {
        match self.tx.try_send(Queued {
            delivery,
            since: Instant::now(),
            trace,
        }) {
            Ok(()) => {
                self.queued.inc();
            }
            Err(e) => {
                let (kind, reason) = match &e {
                    mpsc::error::TrySendError::Full(_) => {
                        ("queue_full", "the sink's queue is full")
                    }
                    mpsc::error::TrySendError::Closed(_) => ("shutdown", "the sink has stopped"),
                };
                let q = e.into_inner();
                tracing::warn!(sink = %self.name, kind, "alert not queued; dead-lettered");
                let _ = self.undelivered.send(Undelivered {
                    sink: self.name.clone(),
                    kind,
                    reason: reason.into(),
                    alerts: q.delivery.alerts,
                });
            }
        }
    }
}

/// Starts a worker for `sink`. The worker stops once every handle is dropped and its queue is
/// drained, or, after `hurry` turns true, dead-letters what is left instead of retrying.
pub fn spawn(
    sink: Arc<dyn Sink>,
    settings: DeliverySettings,
    metrics: SinkMetrics,
    undelivered: mpsc::UnboundedSender<Undelivered>,
    hurry: tokio::sync::watch::Receiver<bool>,
) -> (SinkHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(settings.queue);
    let name = sink.name().to_string();
    let queued = SinkMetrics::gauge(&metrics.queued, &name);
    let handle = SinkHandle {
        name: name.clone(),
        shape: sink.shape(),
        tx,
        undelivered: undelivered.clone(),
        queued: queued.clone(),
    };
    let delivery_seconds = metrics
        .delivery_seconds
        .get_or_create_owned(&vec![("sink".into(), name.clone())]);
    let worker = Worker {
        breaker_open: SinkMetrics::gauge(&metrics.breaker_open, &name),
        delivery_seconds,
        sink,
        limiter: RateLimiter::new(settings.rate_per_second, settings.burst),
        breaker: Breaker::default(),
        settings,
        metrics,
        undelivered,
        queued,
        hurry,
        name,
    };
    (handle, tokio::spawn(worker.run(rx)))
}

struct Worker {
    name: String,
    sink: Arc<dyn Sink>,
    settings: DeliverySettings,
    metrics: SinkMetrics,
    undelivered: mpsc::UnboundedSender<Undelivered>,
    limiter: RateLimiter,
    breaker: Breaker,
    queued: Gauge,
    breaker_open: Gauge,
    delivery_seconds: Histogram,
    hurry: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let batch = self.sink.max_batch().max(1);
        while let Some(first) = rx.recv().await {
            self.queued.dec();
            let since = first.since;
            let span = korvid_common::trace_context::span_after(
                tracing::info_span!("notify.deliver", sink = %self.name),
                first.trace.as_deref(),
            );
            let group = first.delivery.group.clone();
            let mut alerts = first.delivery.alerts;
            // Per-alert sinks take several queued deliveries in one request.
            if self.sink.shape() == super::Shape::PerAlert {
                while alerts.len() < batch {
                    match rx.try_recv() {
                        Ok(next) => {
                            self.queued.dec();
                            alerts.extend(next.delivery.alerts);
                        }
                        Err(_) => break,
                    }
                }
            }
            if self.sink.shape() == super::Shape::Grouped {
                self.deliver(Delivery { group, alerts }, since)
                    .instrument(span)
                    .await;
            } else {
                while !alerts.is_empty() {
                    let rest = alerts.split_off(alerts.len().min(batch));
                    let chunk = std::mem::replace(&mut alerts, rest);
                    self.deliver(
                        Delivery {
                            group: group.clone(),
                            alerts: chunk,
                        },
                        since,
                    )
                    .instrument(span.clone())
                    .await;
                }
            }
        }
    }

    fn give_up(&self, kind: &'static str, reason: String, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        tracing::error!(sink = %self.name, kind, %reason, alerts = alerts.len(), "alerts dead-lettered");
        SinkMetrics::count(
            &self.metrics.alerts,
            &self.name,
            "dead_letter",
            alerts.len() as u64,
        );
        let _ = self.undelivered.send(Undelivered {
            sink: self.name.clone(),
            kind,
            reason,
            alerts,
        });
    }

    /// Tries `delivery` until it is delivered or dead-lettered.
    async fn deliver(&mut self, mut delivery: Delivery, since: Instant) {
        let give_up_after = Duration::from_millis(self.settings.give_up_after_ms);
        let mut attempt: u32 = 0;
        let mut last = String::from("not attempted");
        loop {
            if *self.hurry.borrow() {
                return self.give_up("shutdown", last, delivery.alerts);
            }
            let attempts_spent =
                self.settings.max_attempts > 0 && attempt >= self.settings.max_attempts;
            if since.elapsed() > give_up_after || attempts_spent {
                return self.give_up("gave_up", last, delivery.alerts);
            }
            if let Some(wait) = self.breaker.wait(&self.settings) {
                self.pause(wait.min(give_up_after.saturating_sub(since.elapsed())))
                    .await;
                continue;
            }
            if let Some(wait) = self.limiter.wait() {
                self.pause(wait).await;
                continue;
            }
            attempt += 1;
            let started = Instant::now();
            let result = self.sink.send(&delivery).await;
            self.delivery_seconds
                .observe(started.elapsed().as_secs_f64());
            // The gauge shows the breaker open (or probing) from the failure that tripped it
            // until a request goes through.
            let failed = matches!(result, Err(SendError::Retryable { .. }));
            let tripped = failed && self.breaker.failures + 1 >= self.settings.breaker_failures;
            self.breaker_open.set(i64::from(tripped));
            let delay = match result {
                Ok(()) => {
                    self.breaker.success();
                    SinkMetrics::count(&self.metrics.requests, &self.name, "ok", 1);
                    SinkMetrics::count(
                        &self.metrics.alerts,
                        &self.name,
                        "delivered",
                        delivery.alerts.len() as u64,
                    );
                    return;
                }
                Err(SendError::Refused { reason }) => {
                    // The receiver is up and answered: no reason to open the breaker.
                    self.breaker.success();
                    SinkMetrics::count(&self.metrics.requests, &self.name, "refused", 1);
                    return self.give_up("refused", reason, delivery.alerts);
                }
                Err(SendError::Partial {
                    reason,
                    retry,
                    refused,
                }) => {
                    self.breaker.success();
                    SinkMetrics::count(&self.metrics.requests, &self.name, "partial", 1);
                    let delivered = delivery.alerts.len() - retry.len() - refused.len();
                    SinkMetrics::count(
                        &self.metrics.alerts,
                        &self.name,
                        "delivered",
                        delivered as u64,
                    );
                    let pick = |idx: &[usize]| {
                        idx.iter()
                            .filter_map(|&i| delivery.alerts.get(i).cloned())
                            .collect::<Vec<_>>()
                    };
                    self.give_up("refused", reason.clone(), pick(&refused));
                    delivery.alerts = pick(&retry);
                    if delivery.alerts.is_empty() {
                        return;
                    }
                    last = reason;
                    None
                }
                Err(SendError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    self.breaker.failure(&self.settings);
                    SinkMetrics::count(&self.metrics.requests, &self.name, "retry", 1);
                    tracing::warn!(sink = %self.name, attempt, error = %reason, "delivery failed; will retry");
                    last = reason;
                    retry_after
                }
            };
            let backoff = full_jitter(&self.settings, attempt);
            self.pause(delay.map_or(backoff, |d| d.max(backoff))).await;
        }
    }

    /// Sleeps, but wakes early when shutdown says to hurry.
    async fn pause(&mut self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.hurry.changed() => {}
        }
    }
}

/// A random delay between 0 and `initial * 2^(attempt-1)` (capped): retries of many alerts
/// after one outage spread out instead of arriving together.
fn full_jitter(s: &DeliverySettings, attempt: u32) -> Duration {
    let exp = s
        .initial_backoff_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
        .min(s.max_backoff_ms);
    Duration::from_millis(fastrand::u64(exp / 2..=exp.max(1)))
}

/// A token bucket.
struct RateLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn wait(&mut self) -> Option<Duration> {
        if self.per_second <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

/// Closed → (failures in a row) → open → (cooldown) → one probe → closed or open again.
#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    fn wait(&mut self, _s: &DeliverySettings) -> Option<Duration> {
        let until = self.open_until?;
        let now = Instant::now();
        if now >= until {
            // Half-open: let one request through; its result closes or re-opens.
            self.open_until = None;
            None
        } else {
            Some(until - now)
        }
    }

    fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    fn failure(&mut self, s: &DeliverySettings) {
        self.failures += 1;
        if self.failures >= s.breaker_failures {
            self.open_until = Some(Instant::now() + Duration::from_millis(s.breaker_cooldown_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Flaky {
        fail_first: usize,
        calls: AtomicUsize,
        refuse: bool,
    }

    #[async_trait::async_trait]
    impl Sink for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn shape(&self) -> super::super::Shape {
            super::super::Shape::PerAlert
        }
        async fn send(&self, _d: &Delivery) -> Result<(), SendError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.refuse {
                Err(SendError::refused("bad request"))
            } else if n < self.fail_first {
                Err(SendError::retry("connection refused"))
            } else {
                Ok(())
            }
        }
    }

    fn fast() -> DeliverySettings {
        DeliverySettings {
            initial_backoff_ms: 1,
            max_backoff_ms: 5,
            breaker_failures: 3,
            breaker_cooldown_ms: 20,
            ..Default::default()
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            group: "g".into(),
            alerts: vec![crate::engine::tests::alert("a")],
        }
    }

    #[tokio::test]
    async fn retries_through_the_breaker_until_delivered() {
        let sink = Arc::new(Flaky {
            fail_first: 7,
            calls: AtomicUsize::new(0),
            refuse: false,
        });
        let metrics = SinkMetrics::default();
        let (dl_tx, mut dl_rx) = mpsc::unbounded_channel();
        let (_hurry_tx, hurry) = tokio::sync::watch::channel(false);
        let (handle, join) = spawn(sink.clone(), fast(), metrics.clone(), dl_tx, hurry);
        handle.offer(delivery());
        drop(handle);
        join.await.expect("worker ends");
        assert_eq!(sink.calls.load(Ordering::SeqCst), 8);
        assert!(dl_rx.try_recv().is_err(), "nothing dead-lettered");
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("delivery_seconds", "", metrics.delivery_seconds.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("delivery_seconds_count{sink=\"flaky\"} 8\n"),
            "every attempt is timed: {text}"
        );
    }

    #[tokio::test]
    async fn refusals_and_a_full_queue_go_to_the_dead_letter_path() {
        let sink = Arc::new(Flaky {
            fail_first: 0,
            calls: AtomicUsize::new(0),
            refuse: true,
        });
        let (dl_tx, mut dl_rx) = mpsc::unbounded_channel();
        let (_hurry_tx, hurry) = tokio::sync::watch::channel(false);
        let settings = DeliverySettings { queue: 1, ..fast() };
        let (handle, join) = spawn(sink, settings, SinkMetrics::default(), dl_tx, hurry);
        // The worker may or may not have taken the first one yet: offer enough to overflow.
        for _ in 0..3 {
            handle.offer(delivery());
        }
        drop(handle);
        join.await.expect("worker ends");
        let mut kinds = Vec::new();
        while let Ok(u) = dl_rx.try_recv() {
            kinds.push(u.kind);
        }
        assert_eq!(kinds.len(), 3, "every alert accounted for: {kinds:?}");
        assert!(kinds.contains(&"refused"));
        assert!(kinds.contains(&"queue_full"));
    }

    #[test]
    fn rate_limiter_spaces_requests() {
        let mut r = RateLimiter::new(1.0, 1);
        assert!(r.wait().is_none());
        let w = r.wait().expect("second request waits");
        assert!(w > Duration::from_millis(900) && w <= Duration::from_secs(1));
    }
}
