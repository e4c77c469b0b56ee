//! The notify loop: restore dedup state, then for each finding decide, deliver, persist the new
//! state, and only then store the finding's offset.

use std::sync::Arc;
use std::time::Duration;

use korvid_common::ServiceContext;
use korvid_common::kafka::{DeadLetterSource, DeadLetters, KafkaClientError};
use korvid_schemas::codec::Decoder;
use korvid_schemas::{Alert, AlertStatus, DedupState, Finding};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::dedup::{Decision, DedupStore};
use crate::settings::NotifySettings;
use crate::sinks::{AlertSink, KafkaAlertSink, SinkError, StdoutSink, WebhookSink};

const COMPONENT: &str = "notify";
const STAGE: &str = "notify";

/// Why notify stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// State, an alert or a dead letter was not acknowledged; the finding stays uncommitted.
    #[error("stopped without committing: {0}")]
    Unacknowledged(String),
    /// Kafka clients could not be created or the state could not be read.
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// A sink could not be built.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Builds the alert for a finding under its dedup state.
pub fn alert_for(f: &Finding, state: &DedupState, now: i64) -> Alert {
    Alert {
        cluster: f.cluster.clone(),
        event_time: now,
        id: state.alert_id.clone(),
        fingerprint: f.fingerprint.clone(),
        status: AlertStatus::Firing,
        title: f.title.clone(),
        tactic: f.tactic,
        techniques: f.techniques.clone(),
        severity: f.severity,
        subject: f.subject.clone(),
        detector: f.detector,
        rule_id: f.rule_id.clone(),
        model_version: f.model_version.clone(),
        score: f.score,
        finding_ids: vec![f.id.clone()],
        occurrences: state.occurrences,
        first_seen: state.first_seen,
        last_seen: state.last_seen,
        evidence: f.evidence.clone(),
        implication: f.implication.clone(),
        remediation: f.remediation.clone(),
        prevention: f.prevention.clone(),
        references: f.references.clone(),
    }
}

/// Runs notify until shutdown.
pub async fn run(settings: NotifySettings, ctx: ServiceContext) -> Result<(), NotifyError> {
    ctx.telemetry.declare(COMPONENT);
    let topics = ctx.kafka.topics.clone();
    let producer = ctx.kafka.producer()?;
    let dead_letters = ctx.kafka.dead_letters(producer.clone());

    let mut sinks: Vec<Arc<dyn AlertSink>> = Vec::new();
    if settings.stdout {
        sinks.push(Arc::new(StdoutSink));
    }
    for w in &settings.webhooks {
        sinks.push(Arc::new(WebhookSink::new(w.clone())?));
    }
    if settings.alerts_topic {
        sinks.push(Arc::new(KafkaAlertSink::new(
            producer.clone(),
            topics.alerts.clone(),
        )));
    }

    // Restore what earlier runs (or other instances) already notified.
    let state_decoder = Decoder::<DedupState>::new();
    let mut restored = Vec::new();
    for (_, value) in ctx.kafka.read_to_end(&topics.notify_state).await? {
        match value.map(|v| state_decoder.decode(&v)) {
            Some(Ok(s)) => restored.push(s),
            Some(Err(e)) => tracing::warn!(error = %e, "unreadable dedup state record skipped"),
            None => {}
        }
    }
    let mut store = DedupStore::restore(restored);
    tracing::info!(fingerprints = store.len(), "dedup state restored");

    let consumer = ctx
        .kafka
        .consumer(&ctx.kafka.group_id("notify"), &[&topics.findings])?;
    let mut decoder = ctx.kafka.decoder::<Finding>();
    let t = &ctx.telemetry;
    let decisions: Family<Vec<(String, String)>, Counter> = t.register(
        "notify_findings",
        "Findings handled, by decision (notify, suppress, replay, below_min_severity)",
        Family::default(),
    );
    let deliveries: Family<Vec<(String, String)>, Counter> = t.register(
        "notify_deliveries",
        "Alert deliveries, by sink and result",
        Family::default(),
    );
    ctx.telemetry.set_ready(COMPONENT, true);

    let mut failure = None;
    while let Some(msg) = consumer.next(&ctx.shutdown).await {
        if let Some(bytes) = &msg.payload {
            let handled = match decoder.decode(bytes).await {
                Ok(f) => {
                    handle(
                        &f,
                        &settings,
                        &mut store,
                        &sinks,
                        &producer,
                        &topics.notify_state,
                        &dead_letters,
                        &decisions,
                        &deliveries,
                    )
                    .await
                }
                Err(e) => {
                    dead_letters
                        .send(STAGE, e.kind(), &e.to_string(), bytes, msg.source())
                        .await
                }
            };
            if let Err(e) = handled {
                // State or dead letter not acknowledged: keep the offset so the finding is
                // handled again after a restart (dedup makes that harmless).
                tracing::error!(error = %e, "finding not fully handled; stopping without committing it");
                failure = Some(e.to_string());
                break;
            }
        }
        consumer.done(&msg);
    }
    let _ = producer.flush(Duration::from_secs(5));
    consumer.finish();
    if let Some(why) = failure {
        return Err(NotifyError::Unacknowledged(why));
    }
    tracing::info!("notify stopped");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "notify.finding", skip_all, fields(fingerprint = %f.fingerprint))]
async fn handle(
    f: &Finding,
    settings: &NotifySettings,
    store: &mut DedupStore,
    sinks: &[Arc<dyn AlertSink>],
    producer: &korvid_common::kafka::RecordProducer,
    state_topic: &str,
    dead_letters: &DeadLetters,
    decisions: &Family<Vec<(String, String)>, Counter>,
    deliveries: &Family<Vec<(String, String)>, Counter>,
) -> Result<(), KafkaClientError> {
    if f.severity < settings.min_severity() {
        decisions
            .get_or_create(&vec![("decision".into(), "below_min_severity".into())])
            .inc();
        return Ok(());
    }
    let now = korvid_common::now_millis();
    let decision = store.decide(f, now, settings.repeat_interval_ms);
    let label = match decision {
        Decision::Notify => "notify",
        Decision::Suppress => "suppress",
        Decision::Replay => "replay",
    };
    decisions
        .get_or_create(&vec![("decision".into(), label.into())])
        .inc();
    if decision == Decision::Replay {
        return Ok(());
    }
    let state = store.next_state(f, &decision, now);
    if decision == Decision::Notify {
        let alert = alert_for(f, &state, now);
        let results = futures::future::join_all(sinks.iter().map(|s| s.deliver(&alert))).await;
        for (sink, result) in sinks.iter().zip(results) {
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            deliveries
                .get_or_create(&vec![
                    ("sink".into(), sink.name().to_string()),
                    ("result".into(), outcome.into()),
                ])
                .inc();
            if let Err(e) = result {
                let body =
                    serde_json::to_vec(&crate::sinks::webhook_body(&alert)).unwrap_or_default();
                dead_letters
                    .send(
                        &format!("notify.sink.{}", sink.name()),
                        "delivery_failed",
                        &e.to_string(),
                        &body,
                        DeadLetterSource {
                            cluster: Some(f.cluster.clone()),
                            ..Default::default()
                        },
                    )
                    .await?;
            }
        }
    }
    producer
        .send(state_topic, &state.fingerprint, &state)
        .await?;
    store.commit(state);
    Ok(())
}
