//! The lake writer: consumes findings and alerts (its own consumer group), buffers them per
//! partition, rolls Parquet files by row count or age, and stores offsets only once every row
//! consumed so far is in a file that was synced and renamed into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::error::ArrowError;
use korvid_common::ServiceContext;
use korvid_common::kafka::{AtLeastOnceConsumer, Consumed, DeadLetters, KafkaClientError};
use korvid_schemas::{Alert, Finding};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::columns::LakeRecord;
use crate::files::{self, LakeFileError};
use crate::settings::LakeSettings;

/// Readiness component and dead-letter stage name.
const COMPONENT: &str = "lake";
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How long to wait before retrying a failed file write (disk full, permissions).
const WRITE_RETRY: Duration = Duration::from_secs(5);

/// Why the lake writer stopped.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// Kafka could not be used (external system; retriable).
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// The lake directory could not be written (external system; retriable once fixed).
    #[error(transparent)]
    Files(#[from] LakeFileError),
    /// Rows did not fit the column layout (a bug).
    #[error("building a lake batch: {0}")]
    Columns(#[from] ArrowError),
    /// A blocking file task died (a bug).
    #[error("lake file task failed: {0}")]
    Task(String),
}

/// Rows waiting for their file, per partition (date, cluster).
struct TableBuffer<R> {
    partitions: BTreeMap<(String, String), Vec<R>>,
}

impl<R: LakeRecord> TableBuffer<R> {
    fn new() -> Self {
        TableBuffer {
            partitions: BTreeMap::new(),
        }
    }

    fn push(&mut self, row: R) {
        let key = (
            files::utc_date(row.partition_time()),
            row.cluster().to_string(),
        );
        self.partitions.entry(key).or_default().push(row);
    }

    fn rows(&self) -> usize {
        self.partitions.values().map(Vec::len).sum()
    }
}

struct Metrics {
    rows: Family<Vec<(String, String)>, Counter>,
    files: Family<Vec<(String, String)>, Counter>,
    partitions_deleted: Counter,
    write_errors: Counter,
}

impl Metrics {
    fn table(family: &Family<Vec<(String, String)>, Counter>, table: &str) -> Counter {
        family
            .get_or_create(&vec![("table".to_string(), table.to_string())])
            .clone()
    }
}

/// The writer's state between messages.
struct LakeWriter {
    root: PathBuf,
    findings: TableBuffer<Finding>,
    alerts: TableBuffer<Alert>,
    /// Highest consumed offset per (topic, partition) not yet stored.
    pending: BTreeMap<(String, i32), i64>,
    /// When the oldest buffered row arrived.
    oldest: Option<Instant>,
    metrics: Metrics,
}

impl LakeWriter {
    fn buffered(&self) -> usize {
        self.findings.rows() + self.alerts.rows()
    }

    fn consumed(&mut self, msg: &Consumed) {
        let at = self
            .pending
            .entry((msg.topic.clone(), msg.partition))
            .or_insert(msg.offset);
        *at = (*at).max(msg.offset);
    }

    /// Writes every buffered partition, retrying failed writes until they succeed or shutdown
    /// begins, then stores the offsets. Rows already in a file are never written twice.
    async fn flush(
        &mut self,
        consumer: &AtLeastOnceConsumer,
        shutdown: &korvid_common::Shutdown,
    ) -> Result<(), LakeError> {
        loop {
            let written = async {
                write_table(&self.root, &mut self.findings, &self.metrics).await?;
                write_table(&self.root, &mut self.alerts, &self.metrics).await
            }
            .await;
            match written {
                Ok(()) => break,
                Err(LakeError::Files(e)) => {
                    self.metrics.write_errors.inc();
                    tracing::error!(error = %e, "writing the lake failed; retrying (offsets stay put)");
                    if shutdown.pause(WRITE_RETRY).await {
                        return Err(LakeError::Files(e));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        for ((topic, partition), offset) in std::mem::take(&mut self.pending) {
            consumer.store(&topic, partition, offset)?;
        }
        self.oldest = None;
        Ok(())
    }
}

/// Writes each partition of `buffer` as one file, removing it from the buffer once durable.
async fn write_table<R: LakeRecord>(
    root: &Path,
    buffer: &mut TableBuffer<R>,
    metrics: &Metrics,
) -> Result<(), LakeError> {
    while let Some(((date, cluster), rows)) = buffer.partitions.pop_first() {
        let batch = R::to_batch(&rows)?;
        let dir = files::partition_dir(root, R::TABLE, &date, &cluster);
        let now = korvid_common::now_millis();
        let result = tokio::task::spawn_blocking(move || files::write_parquet(&dir, &batch, now))
            .await
            .map_err(|e| LakeError::Task(e.to_string()))?;
        match result {
            Ok(path) => {
                tracing::debug!(path = %path.display(), rows = rows.len(), "lake file written");
                Metrics::table(&metrics.rows, R::TABLE).inc_by(rows.len() as u64);
                Metrics::table(&metrics.files, R::TABLE).inc();
            }
            Err(e) => {
                // Put the rows back for the retry.
                buffer.partitions.insert((date, cluster), rows);
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Deletes expired date partitions of both tables (off the async runtime).
async fn retention(root: &Path, days: u32, metrics: &Metrics) {
    let root = root.to_path_buf();
    let today = chrono::Utc::now().date_naive();
    let result = tokio::task::spawn_blocking(move || {
        let mut removed = files::apply_retention(&root, Finding::TABLE, days, today)?;
        removed.extend(files::apply_retention(&root, Alert::TABLE, days, today)?);
        Ok::<_, LakeFileError>(removed)
    })
    .await;
    match result {
        Ok(Ok(removed)) => {
            for path in &removed {
                tracing::info!(path = %path.display(), "lake partition past retention deleted");
            }
            metrics.partitions_deleted.inc_by(removed.len() as u64);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "lake retention failed; trying again later"),
        Err(e) => tracing::warn!(error = %e, "lake retention task failed"),
    }
}

/// Runs the lake writer until shutdown.
pub async fn run(settings: LakeSettings, ctx: ServiceContext) -> Result<(), LakeError> {
    ctx.telemetry.declare(COMPONENT);
    let root = settings.dir(&ctx.data_dir);
    std::fs::create_dir_all(&root).map_err(|source| LakeFileError::Io {
        op: "create directory",
        path: root.clone(),
        source,
    })?;
    let topics = ctx.kafka.topics.clone();
    let producer = ctx.kafka.producer()?;
    let dead_letters = ctx.kafka.dead_letters(producer.clone());
    let consumer = ctx.kafka.consumer(
        &ctx.kafka.group_id(COMPONENT),
        &[&topics.findings, &topics.alerts],
    )?;
    let t = &ctx.telemetry;
    let metrics = Metrics {
        rows: t.register(
            "lake_rows_written",
            "Rows written to lake Parquet files, by table",
            Family::default(),
        ),
        files: t.register(
            "lake_files_written",
            "Parquet files written to the lake, by table",
            Family::default(),
        ),
        partitions_deleted: t.register(
            "lake_partitions_deleted",
            "Date partitions deleted by retention",
            Counter::default(),
        ),
        write_errors: t.register(
            "lake_write_errors",
            "Failed attempts to write a lake file (retried)",
            Counter::default(),
        ),
    };
    let mut writer = LakeWriter {
        root: root.clone(),
        findings: TableBuffer::new(),
        alerts: TableBuffer::new(),
        pending: BTreeMap::new(),
        oldest: None,
        metrics,
    };
    let mut finding_decoder = ctx.kafka.decoder::<Finding>();
    let mut alert_decoder = ctx.kafka.decoder::<Alert>();
    let roll_interval = Duration::from_millis(settings.roll_interval_ms);
    // Check the age of the oldest row often enough that a file is never much later than due.
    let mut tick = tokio::time::interval(roll_interval.min(Duration::from_millis(500)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_retention = Instant::now();
    tracing::info!(dir = %root.display(), "lake writer running");
    ctx.telemetry.set_ready(COMPONENT, true);

    let result = loop {
        if settings.retention_days > 0 && Instant::now() >= next_retention {
            retention(&root, settings.retention_days, &writer.metrics).await;
            next_retention = Instant::now() + RETENTION_EVERY;
        }
        let msg = tokio::select! {
            m = consumer.next(&ctx.shutdown) => m,
            _ = tick.tick() => {
                if writer.oldest.is_some_and(|t| t.elapsed() >= roll_interval)
                    && let Err(e) = writer.flush(&consumer, &ctx.shutdown).await
                {
                    break Err(e);
                }
                continue;
            }
        };
        let Some(msg) = msg else { break Ok(()) };
        if let Err(e) = handle(
            &msg,
            &topics.findings,
            &mut finding_decoder,
            &mut alert_decoder,
            &mut writer,
            &dead_letters,
        )
        .await
        {
            break Err(e);
        }
        writer.consumed(&msg);
        if writer.buffered() >= settings.roll_records
            && let Err(e) = writer.flush(&consumer, &ctx.shutdown).await
        {
            break Err(e);
        }
    };
    // Whatever is buffered goes to disk before the final commit.
    let result = match result {
        Ok(()) if writer.buffered() > 0 || !writer.pending.is_empty() => {
            writer.flush(&consumer, &ctx.shutdown).await
        }
        other => other,
    };
    let _ = producer.flush(Duration::from_secs(5));
    consumer.finish();
    if result.is_ok() {
        tracing::info!("lake writer stopped");
    }
    result
}

/// Decodes one message into its table's buffer, or dead-letters it.
async fn handle(
    msg: &Consumed,
    findings_topic: &str,
    finding_decoder: &mut korvid_common::kafka::RecordDecoder<Finding>,
    alert_decoder: &mut korvid_common::kafka::RecordDecoder<Alert>,
    writer: &mut LakeWriter,
    dead_letters: &DeadLetters,
) -> Result<(), LakeError> {
    let Some(bytes) = &msg.payload else {
        return Ok(());
    };
    let decoded = if msg.topic == findings_topic {
        finding_decoder.decode(bytes).await.map(|f| {
            writer.findings.push(f);
        })
    } else {
        alert_decoder.decode(bytes).await.map(|a| {
            writer.alerts.push(a);
        })
    };
    match decoded {
        Ok(()) => {
            writer.oldest.get_or_insert_with(Instant::now);
            Ok(())
        }
        Err(e) => {
            dead_letters
                .send(COMPONENT, e.kind(), &e.to_string(), bytes, msg.source())
                .await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_buffered_by_utc_date_and_cluster() {
        let mut b = TableBuffer::<Finding>::new();
        let day = 1_795_780_800_000; // 2026-11-27T12:00Z
        b.push(crate::columns::tests::finding("a", day, 1));
        b.push(crate::columns::tests::finding("a", day + 1, 2));
        b.push(crate::columns::tests::finding("b", day, 3));
        b.push(crate::columns::tests::finding("a", day + 86_400_000, 4));
        assert_eq!(b.rows(), 4);
        let keys: Vec<_> = b.partitions.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                ("2026-11-27".to_string(), "a".to_string()),
                ("2026-11-27".to_string(), "b".to_string()),
                ("2026-11-28".to_string(), "a".to_string()),
            ]
        );
    }
}
