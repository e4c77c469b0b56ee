//! A watched directory of scanner reports: CI jobs or a cron `trivy image -f json -o DIR/x.json`
//! drop reports here; each `*.json` file is read once per content change (size and mtime),
//! normalised into an ImageScan and written keyed by digest. What was read survives restarts in
//! a small state file, so a restart does not resend every report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use korvid_common::ServiceContext;
use korvid_common::kafka::{DeadLetterSource, DeadLetters, KafkaClientError, RecordProducer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use crate::sanitize::Sanitizer;
use crate::scans::parse_scan;
use crate::settings::ScanDirSettings;

const STAGE: &str = "ingest.scan_dir";
/// Reports larger than this are refused (a large image's Trivy report is a few MiB).
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    len: u64,
    mtime_ns: i128,
}

/// Polls one directory until shutdown.
pub struct ScanDir {
    settings: ScanDirSettings,
    cluster: String,
    producer: RecordProducer,
    dead_letters: DeadLetters,
    sanitizer: Sanitizer,
    topic: String,
    state_file: PathBuf,
    seen: BTreeMap<String, Seen>,
    results: Family<Vec<(String, String)>, Counter>,
}

impl ScanDir {
    /// A watcher for one configured directory; its state lives under `data_dir/ingest/`.
    pub fn new(
        settings: ScanDirSettings,
        cluster: &str,
        producer: RecordProducer,
        sanitizer: Sanitizer,
        ctx: &ServiceContext,
        results: Family<Vec<(String, String)>, Counter>,
    ) -> Self {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(settings.path.display().to_string().as_bytes());
        let state_file = ctx
            .data_dir
            .join("ingest")
            .join(format!("scan-dir-{}.json", hex::encode(&hash[..8])));
        let seen = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        ScanDir {
            cluster: cluster.to_string(),
            dead_letters: ctx.kafka.dead_letters(producer.clone()),
            topic: ctx.kafka.topics.scans.clone(),
            producer,
            sanitizer,
            state_file,
            seen,
            settings,
            results,
        }
    }

    /// Polls until shutdown.
    pub async fn run(mut self, ctx: ServiceContext) -> Result<(), KafkaClientError> {
        tracing::info!(dir = %self.settings.path.display(), "watching for scan reports");
        let poll = Duration::from_millis(self.settings.poll_ms);
        loop {
            self.poll_once().await?;
            if !ctx.shutdown.pause(poll).await {
                break;
            }
        }
        Ok(())
    }

    /// Reads every new or changed report once.
    pub async fn poll_once(&mut self) -> Result<(), KafkaClientError> {
        let entries = match std::fs::read_dir(&self.settings.path) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.settings.path.display(), error = %e, "cannot list scan directory");
                return Ok(());
            }
        };
        let mut files: Vec<(PathBuf, Seen)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".json") && !name.starts_with('.')
            })
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
                let mtime_ns = meta
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_nanos() as i128;
                Some((
                    e.path(),
                    Seen {
                        len: meta.len(),
                        mtime_ns,
                    },
                ))
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let present: Vec<String> = files.iter().map(|(p, _)| name_of(p)).collect();
        let mut changed = false;
        for (path, seen) in files {
            let name = name_of(&path);
            if self.seen.get(&name) == Some(&seen) {
                continue;
            }
            self.read_report(&path, seen.len).await?;
            self.seen.insert(name, seen);
            changed = true;
        }
        // Forget files that were removed, so a report written again under the same name is read.
        let before = self.seen.len();
        self.seen.retain(|k, _| present.contains(k));
        if changed || before != self.seen.len() {
            self.save();
        }
        Ok(())
    }

    async fn read_report(&self, path: &Path, len: u64) -> Result<(), KafkaClientError> {
        let file = path.display().to_string();
        if len > MAX_REPORT_BYTES {
            let reason = format!("{file}: {len} bytes, over the {MAX_REPORT_BYTES}-byte limit");
            return self.reject("too_large", &reason, b"").await;
        }
        let body = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%file, error = %e, "cannot read scan report; will retry");
                return Ok(());
            }
        };
        match parse_scan(&body, &self.cluster, korvid_common::now_millis()) {
            Ok(scan) => {
                self.producer
                    .send(&self.topic, &scan.image_digest, &scan)
                    .await?;
                self.count("ok");
                tracing::info!(%file, digest = %scan.image_digest, vulnerabilities = scan.vulnerabilities.len(), "scan report read");
                Ok(())
            }
            Err(e) => {
                let clean = self.sanitizer.sanitize_scan_report(&body);
                self.reject(e.kind(), &format!("{file}: {e}"), &clean).await
            }
        }
    }

    async fn reject(&self, kind: &str, reason: &str, raw: &[u8]) -> Result<(), KafkaClientError> {
        tracing::warn!(reason, "scan report refused");
        self.count(kind);
        let source = DeadLetterSource {
            cluster: Some(self.cluster.clone()),
            ..Default::default()
        };
        self.dead_letters
            .send(STAGE, kind, reason, raw, source)
            .await
    }

    fn count(&self, result: &str) {
        self.results
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    fn save(&self) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.state_file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.state_file.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&self.seen)?)?;
            std::fs::rename(&tmp, &self.state_file)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %self.state_file.display(), error = %e, "cannot save scan directory state; reports may be read again after a restart");
        }
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
