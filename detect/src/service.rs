//! The detect loop: consume graph windows, evaluate the catalog, publish findings, then store
//! the window's offset. Instances share the work as one consumer group.

use std::time::Duration;

use korvid_common::ServiceContext;
use korvid_common::kafka::KafkaClientError;
use korvid_schemas::GraphWindow;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tracing::Instrument as _;

use crate::engine::{Evaluation, RuleEngine};
use crate::exceptions::Exceptions;
use crate::model::Batcher;
use crate::rules::RuleCatalog;
use crate::settings::DetectSettings;

const COMPONENT: &str = "detect";
const STAGE: &str = "detect.rules";

/// Why detect stopped.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Output or a dead letter was not acknowledged; the input stays uncommitted for a retry.
    #[error("stopped without committing: {0}")]
    Unacknowledged(String),
    /// Kafka clients could not be created.
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// The SQL session could not be created.
    #[error("rule engine: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
    /// No rule could be loaded.
    #[error("no usable rules: {0}")]
    NoRules(String),
    /// The graph model was required (detect.model.mode = "on") and cannot run.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The exceptions file cannot be used.
    #[error(transparent)]
    Exceptions(#[from] crate::exceptions::ExceptionsError),
}

/// Builds the engine from settings, logging every rule that failed to load.
pub async fn engine_from(settings: &DetectSettings) -> Result<RuleEngine, DetectError> {
    let catalog = RuleCatalog::load(
        settings.builtin_rules,
        &settings.rules_dirs,
        &settings.disabled_rules,
    );
    let engine = RuleEngine::new(catalog).await?;
    for e in engine.errors() {
        tracing::error!(error = %e, "rule not loaded");
    }
    if engine.rules().next().is_none() {
        let why = engine
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(DetectError::NoRules(if why.is_empty() {
            "the catalog is empty (detect.builtin_rules = false and no detect.rules_dirs)".into()
        } else {
            why
        }));
    }
    tracing::info!(rules = engine.rules().count(), "rule catalog loaded");
    Ok(engine)
}

/// Runs detect until shutdown.
pub async fn run(settings: DetectSettings, ctx: ServiceContext) -> Result<(), DetectError> {
    ctx.telemetry.declare(COMPONENT);
    let engine = engine_from(&settings).await?;
    let t = &ctx.telemetry;
    let model_metrics = crate::model::BatchMetrics::unregistered();
    t.register(
        "detect_model_batch_graphs",
        "Window graphs per graph-model inference run",
        model_metrics.graphs.clone(),
    );
    t.register(
        "detect_model_batch_seconds",
        "Seconds per graph-model inference run (one batch of graphs)",
        model_metrics.seconds.clone(),
    );
    let model = crate::model::start(&settings.model, model_metrics)?;
    let exceptions = match &settings.exceptions {
        Some(path) => Exceptions::load(path)?,
        None => Exceptions::default(),
    };
    let mut expired_reported = std::collections::BTreeSet::new();
    let topics = ctx.kafka.topics.clone();
    let consumer = ctx
        .kafka
        .consumer(&ctx.kafka.group_id("detect"), &[&topics.windows])?;
    let producer = ctx.kafka.producer()?;
    let dead_letters = ctx.kafka.dead_letters(producer.clone());
    let mut decoder = ctx.kafka.decoder::<GraphWindow>();
    let windows: Counter = t.register(
        "detect_windows",
        "Graph windows evaluated",
        Counter::default(),
    );
    let findings: Family<Vec<(String, String)>, Counter> = t.register(
        "detect_findings",
        "Findings published, by tactic and severity",
        Family::default(),
    );
    let rule_errors: Family<Vec<(String, String)>, Counter> = t.register(
        "detect_rule_errors",
        "Rule executions that failed, by rule",
        Family::default(),
    );
    let repeated: Counter = t.register(
        "detect_findings_repeated",
        "Findings not published again: an earlier part of the same window (an early pane) \
         already published them",
        Counter::default(),
    );
    // Early panes of one window reach the same partition within seconds; a few thousand
    // windows with findings cover them many times over.
    let mut published = crate::repeats::PublishedFindings::new(4_096);
    let excepted: Counter = t.register(
        "detect_findings_excepted",
        "Findings not published because an exception in force covers them",
        Counter::default(),
    );
    let lowered: Counter = t.register(
        "detect_model_lowered",
        "Rule findings the graph model lowered to low (routine in context)",
        Counter::default(),
    );
    let raised: Counter = t.register(
        "detect_model_raised",
        "Rule findings the graph model raised (on an attack path)",
        Counter::default(),
    );
    let model_errors: Counter = t.register(
        "detect_model_errors",
        "Windows whose findings went out unfused because inference failed",
        Counter::default(),
    );
    let batch_windows: Counter = t.register(
        "detect_model_windows",
        "Window graphs scored by the graph model",
        Counter::default(),
    );
    // 1 ms .. 16 s.
    let window_seconds: Histogram = t.register(
        "detect_window_seconds",
        "Seconds the rule catalog took to evaluate one window (tables loaded, every rule run)",
        Histogram::new(exponential_buckets(0.001, 2.0, 15)),
    );
    ctx.telemetry.set_ready(COMPONENT, true);

    let mut failure = None;
    while let Some(first) = consumer.next(&ctx.shutdown).await {
        // With the model on, take what else is already waiting (up to a batch), so the
        // windows are scored together.
        let mut msgs = vec![first];
        if model.is_some() {
            while msgs.len() < settings.model.max_batch_graphs {
                match tokio::time::timeout(Duration::from_millis(1), consumer.next(&ctx.shutdown))
                    .await
                {
                    Ok(Some(m)) => msgs.push(m),
                    _ => break,
                }
            }
        }
        // Each window continues the trace enrich sent it with.
        let spans: Vec<tracing::Span> = msgs
            .iter()
            .map(|m| {
                korvid_common::trace_context::span_after(
                    tracing::info_span!(
                        "detect.window",
                        partition = m.partition,
                        offset = m.offset
                    ),
                    m.trace_parent.as_deref(),
                )
            })
            .collect();
        // Rules, window by window (the engine holds one window's tables at a time).
        let mut results = Vec::with_capacity(msgs.len());
        for (msg, span) in msgs.iter().zip(&spans) {
            windows.inc();
            let Some(bytes) = &msg.payload else {
                results.push(None);
                continue;
            };
            let evaluated = match decoder.decode(bytes).await {
                Ok(window) => {
                    let started = std::time::Instant::now();
                    let evaluation = engine
                        .evaluate(&window, korvid_common::now_millis())
                        .instrument(span.clone())
                        .await;
                    window_seconds.observe(started.elapsed().as_secs_f64());
                    evaluation
                        .map(|eval| (window, eval))
                        .map_err(|e| (e.to_string(), "bad_window"))
                }
                Err(e) => Err((e.to_string(), e.kind())),
            };
            results.push(Some(evaluated));
        }
        // The model, every window of the chunk at once.
        if let Some(batcher) = &model {
            let scored = results
                .iter_mut()
                .filter_map(|r| r.as_mut().and_then(|r| r.as_mut().ok()))
                .map(|(window, eval)| async {
                    let outcome = score_and_fuse(batcher, &engine, window, eval).await;
                    (window.window_id.clone(), outcome)
                });
            for (window, outcome) in futures::future::join_all(scored).await {
                match outcome {
                    Ok(o) => {
                        batch_windows.inc();
                        lowered.inc_by(o.lowered as u64);
                        raised.inc_by(o.raised as u64);
                    }
                    Err(e) => {
                        model_errors.inc();
                        tracing::error!(window = %window, error = %e, "graph model failed; publishing the rule findings unfused");
                    }
                }
            }
        }
        // Publish, in order; a window's offset is stored once its output is acknowledged.
        for ((msg, result), span) in msgs.iter().zip(results).zip(&spans) {
            if let Some(evaluated) = result {
                let bytes = msg.payload.as_deref().unwrap_or_default();
                match evaluated {
                    Ok((_, mut eval)) => {
                        // The model's findings too (the rules' already have theirs).
                        eval.attach_labels();
                        let now = korvid_common::now_millis();
                        for e in exceptions.expired(now) {
                            if expired_reported.insert(e.name.clone()) {
                                tracing::warn!(exception = %e.name, owner = %e.owner, "exception expired; the findings it covered are published again");
                            }
                        }
                        let removed = exceptions.apply(&mut eval.findings, now);
                        excepted.inc_by(removed.values().sum::<usize>() as u64);
                        repeated.inc_by(published.drop_repeats(&mut eval.findings) as u64);
                        for (rule, err) in &eval.failed_rules {
                            tracing::error!(rule = %rule, error = %err, "rule failed on a window");
                            rule_errors
                                .get_or_create(&vec![("rule".into(), rule.clone())])
                                .inc();
                        }
                        let sends = eval.findings.iter().map(|f| {
                            producer
                                .send(&topics.findings, &f.fingerprint, f)
                                .instrument(span.clone())
                        });
                        let results = futures::future::join_all(sends).await;
                        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                            // Not acknowledged: do not store the offset; stop so a restart (or
                            // another instance) re-evaluates the window. Finding ids are
                            // deterministic, so the retry is harmless.
                            tracing::error!(error = %e, "findings not acknowledged; stopping without committing this window");
                            failure = Some(e.to_string());
                            break;
                        }
                        published.remember(&eval.findings);
                        for f in &eval.findings {
                            tracing::info!(rule = ?f.rule_id, detector = ?f.detector, subject = %f.subject, tactic = f.tactic.as_str(), "finding");
                            findings
                                .get_or_create(&vec![
                                    ("tactic".into(), f.tactic.as_str().to_string()),
                                    ("severity".into(), f.severity.as_str().to_string()),
                                ])
                                .inc();
                        }
                    }
                    Err((why, kind)) => {
                        if let Err(e) = dead_letters
                            .send(STAGE, kind, &why, bytes, msg.source())
                            .await
                        {
                            tracing::error!(error = %e, "dead letter not written; stopping without committing");
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            consumer.done(msg);
        }
        if failure.is_some() {
            break;
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    consumer.finish();
    if let Some(why) = failure {
        return Err(DetectError::Unacknowledged(why));
    }
    tracing::info!("detect stopped");
    Ok(())
}

/// Scores one window with the model and fuses the verdict into its findings.
async fn score_and_fuse(
    batcher: &Batcher,
    engine: &RuleEngine,
    window: &GraphWindow,
    eval: &mut Evaluation,
) -> Result<crate::model::FusionOutcome, crate::model::ModelError> {
    let graph = std::sync::Arc::new(crate::model::window_graph(&eval.tables, &eval.findings));
    let scores = batcher.score(graph.clone()).await?;
    Ok(crate::model::fuse(
        window,
        &graph,
        &scores,
        batcher.info(),
        &mut eval.findings,
        korvid_common::now_millis(),
        |f| {
            f.rule_id
                .as_deref()
                .is_some_and(|id| engine.is_state_only(id))
        },
    ))
}
