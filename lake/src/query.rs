//! SQL over the lake: `findings` and `alerts` are DataFusion listing tables over the Parquet
//! files (Hive partitions `date`, `cluster`, listed afresh by every query, so new files show up
//! at once), `inventory` is the current cluster objects read from the compacted objects topic
//! when a query names it. Read-only: DDL, DML and `SET`-style statements are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::parser::ParserError;
use korvid_schemas::{Alert, Finding};

use crate::columns::{LakeRecord, PARTITION_COLUMNS};
use crate::inventory::{InventorySource, InventoryTable};

/// A query that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The SQL does not parse or plan (the user's to fix).
    #[error("{0}")]
    Invalid(String),
    /// Running it failed (an unreachable Kafka for `inventory`, unreadable files).
    #[error("{0}")]
    Execution(String),
    /// It ran longer than `sql.query_timeout_ms`.
    #[error("query cancelled after {0:?} (sql.query_timeout_ms)")]
    Timeout(Duration),
}

impl SqlError {
    /// Whether the query itself is at fault (bad SQL), not the system.
    pub fn is_user_error(&self) -> bool {
        matches!(self, SqlError::Invalid(_))
    }

    fn planning(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::External(_) | DataFusionError::IoError(_) => {
                SqlError::Execution(clean(&e))
            }
            _ => SqlError::Invalid(clean(&e)),
        }
    }
}

/// DataFusion's message without the wrapper prefixes (`External error: `), which say nothing to
/// a person.
fn clean(e: &DataFusionError) -> String {
    let root = e.find_root();
    match root {
        DataFusionError::External(inner) => inner.to_string(),
        DataFusionError::SQL(e, _) => match e.as_ref() {
            ParserError::ParserError(m) => format!("SQL syntax error: {m}"),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// What a query returned.
#[derive(Debug)]
pub struct QueryOutput {
    /// Column names and types (also for zero rows).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

/// The lake's SQL engine: one DataFusion session with the three tables.
#[derive(Clone)]
pub struct LakeSql {
    ctx: SessionContext,
    timeout: Duration,
}

impl std::fmt::Debug for LakeSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSql").finish_non_exhaustive()
    }
}

impl LakeSql {
    /// Registers `findings` and `alerts` over `root` and `inventory` over `inventory`.
    pub fn new(
        root: &Path,
        inventory: InventorySource,
        timeout: Duration,
    ) -> Result<Self, SqlError> {
        // PostgreSQL's dialect: what psql and Grafana users write, and unlike the generic one
        // it does not end a select list at `, cluster` (a keyword of `CLUSTER BY`).
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("korvid", "public")
            .set_str("datafusion.sql_parser.dialect", "PostgreSQL");
        let ctx = SessionContext::new_with_config(config);
        let root = std::path::absolute(root)
            .map_err(|e| SqlError::Execution(format!("lake directory {}: {e}", root.display())))?;
        let register = |name: &str, table: Arc<dyn TableProvider>| {
            ctx.register_table(name, table)
                .map(|_| ())
                .map_err(|e| SqlError::Execution(clean(&e)))
        };
        register(
            Finding::TABLE,
            Arc::new(LakeTable::new(
                &root,
                Finding::TABLE,
                Finding::file_schema(),
            )?),
        )?;
        register(
            Alert::TABLE,
            Arc::new(LakeTable::new(&root, Alert::TABLE, Alert::file_schema())?),
        )?;
        register("inventory", Arc::new(InventoryTable::new(inventory)))?;
        Ok(LakeSql { ctx, timeout })
    }

    /// Parses and plans `sql` (read-only statements only).
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan, SqlError> {
        let plan = self
            .ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(SqlError::planning)?;
        datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| SqlError::Invalid(format!("{}: the lake is read-only", clean(&e))))?;
        Ok(plan)
    }

    /// Runs a planned query to completion.
    pub async fn execute(&self, plan: LogicalPlan) -> Result<QueryOutput, SqlError> {
        let run = async {
            let df = self
                .ctx
                .execute_logical_plan(plan)
                .await
                .map_err(SqlError::planning)?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df
                .collect()
                .await
                .map_err(|e| SqlError::Execution(clean(&e)))?;
            Ok(QueryOutput { schema, batches })
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| SqlError::Timeout(self.timeout))?
    }

    /// Plans and runs `sql`.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput, SqlError> {
        let plan = self.plan(sql).await?;
        self.execute(plan).await
    }
}

/// A lake table: a listing table over `<root>/<table>/`, or no rows while that directory does
/// not exist yet (a lake nothing has been written to is empty, not an error).
#[derive(Debug)]
struct LakeTable {
    dir: PathBuf,
    listing: ListingTable,
}

impl LakeTable {
    fn new(root: &Path, table: &str, file_schema: SchemaRef) -> Result<Self, SqlError> {
        let dir = root.join(table);
        // A trailing separator makes it a directory to list, not a file.
        let url = ListingTableUrl::parse(format!("{}/", dir.display()))
            .map_err(|e| SqlError::Execution(format!("lake table {table}: {}", clean(&e))))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                PARTITION_COLUMNS
                    .iter()
                    .map(|c| (c.to_string(), DataType::Utf8))
                    .collect(),
            );
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(file_schema);
        let listing = ListingTable::try_new(config)
            .map_err(|e| SqlError::Execution(format!("lake table {table}: {}", clean(&e))))?;
        Ok(LakeTable { dir, listing })
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.listing.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.listing.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if !self.dir.is_dir() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema().project(p)?),
                None => self.schema(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        self.listing.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files;
    use korvid_common::Telemetry;
    use korvid_common::kafka::{KafkaContext, KafkaSettings};

    fn engine(root: &Path) -> LakeSql {
        // Nothing listens here: only `inventory` would try it.
        let kafka = KafkaContext::new(
            KafkaSettings::default(),
            "127.0.0.1:1".into(),
            &Telemetry::new(),
        );
        let inventory = InventorySource {
            kafka,
            timeout: Duration::from_millis(200),
        };
        LakeSql::new(root, inventory, Duration::from_secs(30)).expect("engine")
    }

    fn text(out: &QueryOutput) -> Vec<String> {
        let mut rows = Vec::new();
        for b in &out.batches {
            for i in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, i).expect("cell"))
                    .collect();
                rows.push(cells.join("|"));
            }
        }
        rows
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_become_columns_and_prune() {
        let dir = tempfile::tempdir().expect("tmp");
        let day = 1_795_780_800_000; // 2026-11-27T12:00Z
        let f = crate::columns::tests::finding;
        for (cluster, time, n) in [("a", day, 1), ("a", day, 2), ("b", day - 86_400_000, 3)] {
            let part =
                files::partition_dir(dir.path(), "findings", &files::utc_date(time), cluster);
            let batch = Finding::to_batch(&[f(cluster, time, n)]).expect("batch");
            files::write_parquet(&part, &batch, time).expect("write");
        }
        let sql = engine(dir.path());
        let out = sql
            .query("SELECT date, cluster, count(*) FROM findings GROUP BY 1, 2 ORDER BY 1, 2")
            .await
            .expect("query");
        assert_eq!(text(&out), ["2026-11-26|b|1", "2026-11-27|a|2"]);
        let out = sql
            .query(
                "SELECT id FROM findings WHERE cluster = 'a' AND date = '2026-11-27' ORDER BY id",
            )
            .await
            .expect("query");
        assert_eq!(text(&out), ["f-1", "f-2"]);
        // Alerts were never written: an empty table with its columns.
        let out = sql
            .query("SELECT status, occurrences, cluster FROM alerts")
            .await
            .expect("empty alerts");
        assert!(out.batches.iter().all(|b| b.num_rows() == 0));
        assert_eq!(out.schema.fields().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_sql_writes_and_unreachable_kafka_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let sql = engine(dir.path());
        let e = sql.query("SELEC 1").await.expect_err("syntax");
        assert!(
            e.is_user_error() && e.to_string().contains("SQL syntax error"),
            "{e}"
        );
        let e = sql
            .query("SELECT nope FROM findings")
            .await
            .expect_err("column");
        assert!(e.is_user_error() && e.to_string().contains("nope"), "{e}");
        let e = sql
            .query("CREATE TABLE x AS SELECT 1")
            .await
            .expect_err("ddl");
        assert!(e.to_string().contains("read-only"), "{e}");
        let e = sql
            .query("SELECT count(*) FROM inventory")
            .await
            .expect_err("no kafka");
        assert!(!e.is_user_error());
        let msg = e.to_string();
        assert!(
            msg.starts_with("inventory: cannot read korvid.k8s.objects.v1"),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.1:1"), "{msg}");
    }
}
