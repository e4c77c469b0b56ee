//! The lake on disk: Hive-style partition paths, Parquet files written under a temporary name
//! and renamed into place once synced (readers never see half a file), and retention by date
//! partition.
//!
//! Layout: `<root>/<table>/date=YYYY-MM-DD/cluster=<cluster>/part-<millis>-<seq>.parquet`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// A lake file operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LakeFileError {
    /// The file system refused (disk full, permissions): retriable once fixed, not the input's
    /// fault.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding Parquet failed (a bug in the column layout).
    #[error("writing Parquet {path}: {source}")]
    Parquet {
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: parquet::errors::ParquetError,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LakeFileError + 'a {
    move |source| LakeFileError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `YYYY-MM-DD` (UTC) of a time in milliseconds; times outside chrono's range fall on
/// 1970-01-01.
pub fn utc_date(millis: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// A partition value safe as one path segment: bytes outside `[A-Za-z0-9._-]` are
/// percent-encoded (DataFusion decodes them back when it reads the partition).
pub fn encode_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// The directory of one partition of `table`.
pub fn partition_dir(root: &Path, table: &str, date: &str, cluster: &str) -> PathBuf {
    root.join(table)
        .join(format!("date={date}"))
        .join(format!("cluster={}", encode_partition_value(cluster)))
}

/// Distinct, increasing file sequence numbers. They start from a value derived from the clock
/// and the process id, so two writers on one lake do not pick the same name in the same
/// millisecond.
fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
        ((u64::from(std::process::id()) << 20) ^ nanos) % 1_000_000_000
    });
    start + SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Writes `batch` as a new Parquet file in `dir`, durably: a hidden temporary file is written and
/// synced, then renamed to `part-<millis>-<seq>.parquet`, then the directory is synced. Returns
/// the final path.
pub fn write_parquet(
    dir: &Path,
    batch: &RecordBatch,
    now_millis: i64,
) -> Result<PathBuf, LakeFileError> {
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let name = format!("part-{now_millis}-{}.parquet", next_seq());
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let result = (|| {
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let parquet = |source| LakeFileError::Parquet {
            path: tmp.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet)?;
        writer.write(batch).map_err(parquet)?;
        let file = writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        // The rename itself must survive a crash before the offsets move.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync directory", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Deletes the date partitions of `table` older than `retention_days` before `today`; returns
/// the directories removed. Directories that are not `date=YYYY-MM-DD` are left alone.
pub fn apply_retention(
    root: &Path,
    table: &str,
    retention_days: u32,
    today: NaiveDate,
) -> Result<Vec<PathBuf>, LakeFileError> {
    let mut removed = Vec::new();
    if retention_days == 0 {
        return Ok(removed);
    }
    let Some(oldest_kept) = today.checked_sub_days(chrono::Days::new(u64::from(retention_days)))
    else {
        return Ok(removed);
    };
    let dir = root.join(table);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(io("list", &dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list", &dir))?;
        let name = entry.file_name();
        let Some(date) = name
            .to_str()
            .and_then(|n| n.strip_prefix("date="))
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        else {
            continue;
        };
        if date < oldest_kept {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::LakeRecord;
    use korvid_schemas::Finding;

    #[test]
    fn partitions_are_utc_dates_and_safe_segments() {
        // 2026-11-27T23:59:59.999Z and one millisecond later.
        assert_eq!(utc_date(1_795_823_999_999), "2026-11-27");
        assert_eq!(utc_date(1_795_824_000_000), "2026-11-28");
        assert_eq!(encode_partition_value("prod-eu.1"), "prod-eu.1");
        assert_eq!(encode_partition_value("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_partition_value(".."), "%2E.");
        assert_eq!(
            partition_dir(Path::new("/lake"), "findings", "2026-11-27", "prod"),
            Path::new("/lake/findings/date=2026-11-27/cluster=prod")
        );
    }

    #[test]
    fn files_appear_whole_under_their_final_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let part = partition_dir(dir.path(), "findings", "2026-11-27", "prod");
        let batch =
            Finding::to_batch(&[crate::columns::tests::finding("prod", 1, 1)]).expect("batch");
        let a = write_parquet(&part, &batch, 42).expect("write");
        let b = write_parquet(&part, &batch, 42).expect("write");
        assert_ne!(a, b, "names never collide");
        let names: Vec<String> = std::fs::read_dir(&part)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("part-42-") && n.ends_with(".parquet"))
        );
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(&a).expect("open"),
        )
        .expect("parquet")
        .build()
        .expect("reader");
        let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
        assert_eq!(rows, 1);
    }

    #[test]
    fn retention_removes_only_old_date_partitions() {
        let dir = tempfile::tempdir().expect("tmp");
        for date in ["2026-11-01", "2026-11-19", "2026-11-20", "2026-11-27"] {
            std::fs::create_dir_all(partition_dir(dir.path(), "alerts", date, "c")).expect("mk");
        }
        std::fs::create_dir_all(dir.path().join("alerts/not-a-partition")).expect("mk");
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
        let removed = apply_retention(dir.path(), "alerts", 7, today).expect("retention");
        let names: Vec<_> = removed
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["date=2026-11-01", "date=2026-11-19"]);
        assert!(dir.path().join("alerts/date=2026-11-20").exists());
        assert!(dir.path().join("alerts/not-a-partition").exists());
        assert!(
            apply_retention(dir.path(), "alerts", 0, today)
                .expect("off")
                .is_empty()
        );
        assert!(
            apply_retention(dir.path(), "findings", 7, today)
                .expect("no table yet")
                .is_empty()
        );
    }
}
