//! Audit log files, for clusters where the webhook is not allowed: tails kube-apiserver's log
//! backend output (one Event per line) and reads files of EventLists, arrays of Events or
//! pretty-printed Events — any sequence of top-level JSON documents.
//!
//! Survives rotation (the path's inode changes: the old file is read to its end first) and
//! truncation (copytruncate), and restarts: the position acknowledged by Kafka is checkpointed
//! per path with the file's inode, so a restart resumes where it left off.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use korvid_common::ServiceContext;
use korvid_common::kafka::{DeadLetterSource, DeadLetters, KafkaClientError, RecordProducer};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use crate::audit::{parse_value, partition_key};
use crate::sanitize::Sanitizer;
use crate::settings::AuditLogSettings;

const STAGE: &str = "ingest.audit_log";
/// Bytes read at a time.
const READ_CHUNK: usize = 256 << 10;

/// Splits a byte stream into top-level JSON documents, keeping an incomplete tail for later.
#[derive(Default)]
pub struct DocumentSplitter {
    buf: Vec<u8>,
}

/// One piece of the stream: a document, or bytes that are not JSON (skipped to the next line).
#[derive(Debug)]
pub enum Piece {
    /// A complete JSON document.
    Document(serde_json::Value),
    /// Unparseable bytes and the reason.
    Garbage(Vec<u8>, String),
}

impl DocumentSplitter {
    /// Adds bytes and returns every complete piece, plus the stream offset of the first byte
    /// still buffered; `base` is that offset before this call.
    pub fn push(&mut self, bytes: &[u8], base: u64) -> (Vec<Piece>, u64) {
        self.buf.extend_from_slice(bytes);
        let mut pieces = Vec::new();
        let mut start = 0usize;
        loop {
            let rest = &self.buf[start..];
            let skip_ws = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
            if skip_ws == rest.len() {
                start = self.buf.len();
                break;
            }
            let mut stream = serde_json::Deserializer::from_slice(&rest[skip_ws..])
                .into_iter::<serde_json::Value>();
            match stream.next() {
                Some(Ok(v)) => {
                    start += skip_ws + stream.byte_offset();
                    pieces.push(Piece::Document(v));
                }
                Some(Err(e)) if e.is_eof() => {
                    start += skip_ws;
                    break;
                }
                Some(Err(e)) => {
                    // Resynchronise at the next line: logs are line-oriented even when a line
                    // is broken.
                    let from = start + skip_ws;
                    let end = self.buf[from..]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map(|p| from + p + 1);
                    let Some(end) = end else {
                        // No newline yet: wait for more (the writer may be mid-line).
                        start = from;
                        break;
                    };
                    pieces.push(Piece::Garbage(self.buf[from..end].to_vec(), e.to_string()));
                    start = end;
                }
                None => {
                    start = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..start);
        (pieces, base + start as u64)
    }

    /// Forgets buffered bytes (after truncation or rotation).
    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    inode: u64,
    offset: u64,
}

/// Positions acknowledged by Kafka, per path, persisted as JSON (write + rename).
struct Checkpoints {
    file: PathBuf,
    map: BTreeMap<String, Checkpoint>,
}

impl Checkpoints {
    fn load(file: PathBuf) -> Self {
        let map = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Checkpoints { file, map }
    }

    fn save(&self) -> std::io::Result<()> {
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.map)?)?;
        std::fs::rename(&tmp, &self.file)
    }
}

struct Open {
    file: std::fs::File,
    inode: u64,
    /// Offset of the next byte to read.
    read_pos: u64,
    /// Offset up to which everything is parsed and acknowledged.
    done_pos: u64,
}

/// Tails one audit log path until shutdown.
pub struct AuditLogTail {
    settings: AuditLogSettings,
    cluster: String,
    sanitizer: Sanitizer,
    producer: RecordProducer,
    dead_letters: DeadLetters,
    topic: String,
    checkpoints: Checkpoints,
    splitter: DocumentSplitter,
    open: Option<Open>,
    chunk: Vec<u8>,
    events: Counter,
    rotations: Counter,
}

impl AuditLogTail {
    /// A tail for one configured path; checkpoints live under `data_dir/ingest/`.
    pub fn new(
        settings: AuditLogSettings,
        cluster: &str,
        sanitizer: Sanitizer,
        producer: RecordProducer,
        ctx: &ServiceContext,
        events: Counter,
        rotations: Counter,
    ) -> Self {
        use sha2::{Digest, Sha256};
        let path_hash = Sha256::digest(settings.path.display().to_string().as_bytes());
        let name = hex::encode(&path_hash[..8]);
        AuditLogTail {
            checkpoints: Checkpoints::load(
                ctx.data_dir
                    .join("ingest")
                    .join(format!("audit-log-{name}.checkpoint.json")),
            ),
            cluster: cluster.to_string(),
            dead_letters: ctx.kafka.dead_letters(producer.clone()),
            topic: ctx.kafka.topics.audit.clone(),
            splitter: DocumentSplitter::default(),
            open: None,
            chunk: vec![0u8; READ_CHUNK],
            settings,
            sanitizer,
            producer,
            events,
            rotations,
        }
    }

    fn key(&self) -> String {
        self.settings.path.display().to_string()
    }

    /// Polls the file until shutdown.
    pub async fn run(mut self, ctx: ServiceContext) -> Result<(), KafkaClientError> {
        let poll = Duration::from_millis(self.settings.poll_ms);
        tracing::info!(path = %self.settings.path.display(), "tailing audit log");
        loop {
            self.poll_once().await?;
            if !ctx.shutdown.pause(poll).await {
                break;
            }
        }
        Ok(())
    }

    /// Reads what is new, publishes it, and checkpoints what Kafka acknowledged.
    pub async fn poll_once(&mut self) -> Result<(), KafkaClientError> {
        let path = self.settings.path.clone();
        let current = std::fs::metadata(&path).ok();
        if self.open.is_none() {
            let Some(meta) = &current else {
                return Ok(());
            };
            self.open_file(&path, meta.ino())?;
        }
        // Read the open file; then look at what the path points to now.
        self.read_available().await?;
        let Some(open) = &self.open else {
            return Ok(());
        };
        match current {
            Some(meta) if meta.ino() != open.inode => {
                // Rotated: the old file has been read to its end above.
                tracing::info!(path = %path.display(), "audit log rotated");
                self.rotations.inc();
                self.splitter.reset();
                self.open_file(&path, meta.ino())?;
                self.read_available().await?;
            }
            Some(meta) if meta.len() < open.read_pos => {
                tracing::info!(path = %path.display(), "audit log truncated; reading from the start");
                self.rotations.inc();
                self.splitter.reset();
                if let Some(o) = &mut self.open {
                    o.read_pos = 0;
                    o.done_pos = 0;
                    let _ = o.file.seek(SeekFrom::Start(0));
                }
                self.read_available().await?;
            }
            _ => {}
        }
        Ok(())
    }

    fn open_file(&mut self, path: &Path, inode: u64) -> Result<(), KafkaClientError> {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open audit log");
                self.open = None;
                return Ok(());
            }
        };
        let resume = self
            .checkpoints
            .map
            .get(&self.key())
            .filter(|c| c.inode == inode)
            .map(|c| c.offset)
            .unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(resume));
        self.open = Some(Open {
            file,
            inode,
            read_pos: resume,
            done_pos: resume,
        });
        Ok(())
    }

    async fn read_available(&mut self) -> Result<(), KafkaClientError> {
        loop {
            let Some(open) = &mut self.open else {
                return Ok(());
            };
            let n = match open.file.read(&mut self.chunk) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "reading audit log failed; retrying next poll");
                    return Ok(());
                }
            };
            if n == 0 {
                return Ok(());
            }
            // Invariant: the splitter's buffered bytes start at `done_pos`.
            let base = open.done_pos;
            open.read_pos += n as u64;
            let (pieces, next) = self.splitter.push(&self.chunk[..n], base);
            self.publish(pieces).await?;
            self.checkpoint(next);
        }
    }

    /// Records that everything before `offset` is acknowledged.
    fn checkpoint(&mut self, offset: u64) {
        let Some(open) = &mut self.open else {
            return;
        };
        if offset == open.done_pos {
            return;
        }
        open.done_pos = offset;
        let entry = Checkpoint {
            inode: open.inode,
            offset,
        };
        self.checkpoints.map.insert(self.key(), entry);
        if let Err(e) = self.checkpoints.save() {
            tracing::warn!(error = %e, "saving the audit log checkpoint failed");
        }
    }

    async fn publish(&mut self, pieces: Vec<Piece>) -> Result<(), KafkaClientError> {
        for piece in pieces {
            match piece {
                Piece::Document(doc) => {
                    match parse_value(doc, true, &self.cluster, &self.sanitizer) {
                        Ok(batch) => {
                            let keys: Vec<String> =
                                batch.events.iter().map(partition_key).collect();
                            let sends = batch
                                .events
                                .iter()
                                .zip(&keys)
                                .map(|(ev, key)| self.producer.send(&self.topic, key, ev));
                            for r in futures::future::join_all(sends).await {
                                r?;
                            }
                            self.events.inc_by(batch.events.len() as u64);
                            for (err, raw) in &batch.rejected {
                                self.reject(err.kind(), &err.to_string(), raw).await?;
                            }
                        }
                        Err(e) => {
                            let raw = serde_json::to_vec(&e.to_string()).unwrap_or_default();
                            self.reject(e.kind(), &e.to_string(), &raw).await?;
                        }
                    }
                }
                Piece::Garbage(bytes, why) => {
                    let clean = self.sanitizer.sanitize_rejected_body(&bytes);
                    self.reject("invalid_json", &why, &clean).await?;
                }
            }
        }
        Ok(())
    }

    async fn reject(&self, kind: &str, why: &str, raw: &[u8]) -> Result<(), KafkaClientError> {
        let source = DeadLetterSource {
            cluster: Some(self.cluster.clone()),
            topic: None,
            partition: None,
            offset: None,
        };
        self.dead_letters.send(STAGE, kind, why, raw, source).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Document(v) => v["auditID"].as_str().unwrap_or("list").to_string(),
                Piece::Garbage(..) => "garbage".into(),
            })
            .collect()
    }

    #[test]
    fn splits_lines_pretty_documents_and_partial_writes() {
        let mut s = DocumentSplitter::default();
        let (p, off) = s.push(b"{\"auditID\":\"a\"}\n{\"auditID\":\"b\"}\n{\"audit", 0);
        assert_eq!(docs(&p), ["a", "b"]);
        assert_eq!(off, 32, "the partial third line stays buffered");
        let (p, off) = s.push(b"ID\":\"c\"}\n{\n  \"auditID\": \"d\"\n}\n", off);
        assert_eq!(docs(&p), ["c", "d"]);
        let (p, _) = s.push(b"not json at all\n{\"auditID\":\"e\"}\n", off);
        assert_eq!(docs(&p), ["garbage", "e"]);
    }
}
