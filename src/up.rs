//! Starts one service, or all of them (`up`), with shared Kafka, telemetry and shutdown.

use std::time::Duration;

use anyhow::{Context, bail};
use korvid_common::broker::LocalBroker;
use korvid_common::kafka::KafkaContext;
use korvid_common::{ServiceContext, Shutdown, Telemetry};

use crate::settings::KorvidSettings;

/// A running service; its error is reported as text (each service has its own error type).
type ServiceFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// How long services get to drain after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(6);

/// Runs `service` (`up`, `ingest`, `enrich`, `detect`, `notify`, `lake`) until shutdown.
pub async fn run(service: &str, mut settings: KorvidSettings) -> anyhow::Result<()> {
    if service != "up" && settings.kafka.bootstrap_servers.is_none() {
        bail!(
            "kafka.bootstrap_servers (env KORVID__KAFKA__BOOTSTRAP_SERVERS) is required for \
             `korvid {service}`; only `korvid up` starts the embedded broker"
        );
    }
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let telemetry = Telemetry::new();
    // Everything this process will run is declared up front, so /readyz cannot say yes early.
    for name in ["kafka", "ingest", "enrich", "detect", "notify", "lake"] {
        let in_up = service == "up" && (name != "lake" || settings.lake.enabled);
        if name == "kafka" || in_up || service == name {
            telemetry.declare(name);
        }
    }
    if !settings.telemetry.listen.is_empty() {
        let addr = settings
            .telemetry
            .listen
            .parse()
            .context("telemetry.listen")?;
        let access = korvid_common::telemetry::TelemetryAccess::from_settings(&settings.telemetry)?;
        telemetry
            .serve(addr, &access, shutdown.clone())
            .await
            .context("telemetry server (telemetry.listen, telemetry.tls)")?;
    }

    let mut broker = None;
    let bootstrap = match (&settings.kafka.bootstrap_servers, service) {
        (Some(b), _) => b.clone(),
        (None, "up") => {
            std::fs::create_dir_all(&settings.data_dir).with_context(|| {
                format!("cannot create data_dir {}", settings.data_dir.display())
            })?;
            let b = LocalBroker::start(&settings.broker, &settings.data_dir).await?;
            let addr = b.bootstrap.clone();
            broker = Some(b);
            addr
        }
        (None, other) => bail!("no Kafka for `korvid {other}`"),
    };

    if broker.is_some() {
        LocalBroker::tune_clients(&settings.broker, &mut settings.kafka.client);
    }
    let kafka = KafkaContext::new(settings.kafka.clone(), bootstrap, &telemetry);
    let started = async {
        kafka.wait_for_broker(Duration::from_secs(30)).await?;
        kafka.ensure_topics().await
    };
    // A stop signal while Kafka is still awaited ends the process at once, not after the wait.
    let started = tokio::select! {
        r = started => Some(r),
        () = shutdown.triggered() => None,
    };
    if !matches!(started, Some(Ok(()))) {
        if let Some(b) = broker {
            b.stop(Duration::from_secs(3)).await;
        }
        return match started {
            Some(Err(e)) => Err(e.into()),
            _ => {
                tracing::info!("stopped before Kafka was reachable");
                Ok(())
            }
        };
    }
    telemetry.set_ready("kafka", true);
    let ctx = ServiceContext {
        kafka,
        telemetry,
        shutdown: shutdown.clone(),
        data_dir: settings.data_dir.clone(),
    };

    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let launch = |name: &'static str, fut: ServiceFuture| {
        let shutdown = shutdown.clone();
        let failed = failed.clone();
        shutdown.clone().spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(service = name, error = %e, "service failed; shutting down");
                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                shutdown.trigger();
            }
        });
    };
    let s = &settings;
    if matches!(service, "up" | "ingest") {
        launch(
            "ingest",
            Box::pin(err_str(korvid_ingest::run(s.ingest.clone(), ctx.clone()))),
        );
    }
    if matches!(service, "up" | "enrich") {
        launch(
            "enrich",
            Box::pin(err_str(korvid_enrich::run(s.enrich.clone(), ctx.clone()))),
        );
    }
    if matches!(service, "up" | "detect") {
        launch(
            "detect",
            Box::pin(err_str(korvid_detect::run(s.detect.clone(), ctx.clone()))),
        );
    }
    if matches!(service, "up" | "notify") {
        launch(
            "notify",
            Box::pin(err_str(korvid_notify::run(s.notify.clone(), ctx.clone()))),
        );
    }
    if (service == "up" && s.lake.enabled) || service == "lake" {
        launch(
            "lake",
            Box::pin(err_str(korvid_lake::run(s.lake.clone(), ctx.clone()))),
        );
    }
    tracing::info!(service, "korvid running; SIGTERM or Ctrl-C to stop");

    shutdown.triggered().await;
    let drained = shutdown.wait_tasks(DRAIN).await;
    if !drained {
        tracing::warn!("services did not drain within {DRAIN:?}");
    }
    if let Some(b) = broker {
        b.stop(Duration::from_secs(3)).await;
    }
    if failed.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("a service failed; see the log above");
    }
    tracing::info!("korvid stopped cleanly");
    Ok(())
}

/// `korvid import`: writes a snapshot to the objects topic and prints what it did.
pub async fn import(paths: &[std::path::PathBuf], settings: KorvidSettings) -> anyhow::Result<()> {
    let Some(bootstrap) = settings.kafka.bootstrap_servers.clone() else {
        bail!(
            "kafka.bootstrap_servers (env KORVID__KAFKA__BOOTSTRAP_SERVERS) is required for \
             `korvid import`; with `korvid up` running on the embedded broker, that is \
             {}",
            settings.broker.listen
        );
    };
    let telemetry = Telemetry::new();
    let kafka = KafkaContext::new(settings.kafka.clone(), bootstrap, &telemetry);
    kafka.wait_for_broker(Duration::from_secs(30)).await?;
    kafka.ensure_topics().await?;
    let ctx = ServiceContext {
        kafka,
        telemetry,
        shutdown: Shutdown::new(),
        data_dir: settings.data_dir.clone(),
    };
    let sanitizer = korvid_ingest::sanitize::Sanitizer::for_settings(&settings.ingest);
    let report =
        korvid_ingest::snapshot::import(paths, &settings.ingest.cluster, &sanitizer, &ctx).await?;
    for r in &report.refused {
        eprintln!("refused {}: {} ({})", r.origin, r.reason, r.kind);
    }
    println!(
        "imported {} objects from {} files into {}; {} documents refused",
        report.objects,
        report.files,
        ctx.kafka.topics.objects,
        report.refused.len()
    );
    if !report.refused.is_empty() {
        bail!(
            "{} documents refused (sent to {})",
            report.refused.len(),
            ctx.kafka.topics.deadletter
        );
    }
    Ok(())
}

async fn err_str<E: std::fmt::Display>(
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    fut.await.map_err(|e| e.to_string())
}
