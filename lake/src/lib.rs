//! `korvid lake` and `korvid sql`: the findings lake.
//!
//! The writer ([`run`]) consumes findings and alerts in its own consumer group and writes them as
//! Parquet files partitioned by UTC date and cluster
//! (`<dir>/findings/date=YYYY-MM-DD/cluster=<cluster>/part-<millis>-<seq>.parquet`), rolling a
//! file by row count or age, renaming each into place once synced, and only then storing the
//! consumed offsets (at least once: a crash or rebalance may write a row twice, with the same
//! deterministic `id`). Retention deletes whole date partitions.
//!
//! [`LakeSql`] answers SQL over `findings`, `alerts` and the current `inventory`; [`pg`] serves
//! it over the PostgreSQL wire protocol.

pub mod columns;
pub mod files;
pub mod inventory;
pub mod pg;
pub mod query;
mod service;
mod settings;

pub use inventory::InventorySource;
pub use query::{LakeSql, QueryOutput, SqlError};
pub use service::{LakeError, run};
pub use settings::{LakeSettings, SqlSettings};
