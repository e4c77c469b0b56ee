//! SQL over Arrow batches that change every window.
//!
//! A [`SqlSession`] registers fixed-schema tables whose contents are swapped per window, so a
//! query is parsed, validated and planned logically once ([`PreparedQuery`]) and then executed
//! against each new window's batches.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

/// A table whose batches are replaced wholesale.
#[derive(Debug)]
pub struct BatchTable {
    schema: SchemaRef,
    batches: RwLock<Vec<RecordBatch>>,
}

impl BatchTable {
    fn new(schema: SchemaRef) -> Self {
        BatchTable {
            schema,
            batches: RwLock::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl TableProvider for BatchTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self
            .batches
            .read()
            .map_err(|_| DataFusionError::Internal("batch table lock poisoned".into()))?
            .clone();
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[batches], self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}

/// A query parsed and planned against a session's tables.
#[derive(Clone, Debug)]
pub struct PreparedQuery {
    plan: LogicalPlan,
}

impl PreparedQuery {
    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }
}

/// A DataFusion session over a fixed set of swappable tables.
pub struct SqlSession {
    ctx: SessionContext,
    tables: HashMap<String, Arc<BatchTable>>,
}

impl SqlSession {
    /// A session with the given (name, schema) tables, empty. Single-partition execution: the
    /// inputs are one window, and the stage already runs windows concurrently.
    pub fn new(tables: &[(&str, SchemaRef)]) -> Result<Self> {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        let ctx = SessionContext::new_with_config(config);
        let mut map = HashMap::new();
        for (name, schema) in tables {
            let table = Arc::new(BatchTable::new(schema.clone()));
            ctx.register_table(*name, table.clone())?;
            map.insert((*name).to_string(), table);
        }
        Ok(SqlSession { ctx, tables: map })
    }

    /// Parses and plans `sql` once.
    pub async fn prepare(&self, sql: &str) -> Result<PreparedQuery> {
        let plan = self.ctx.state().create_logical_plan(sql).await?;
        Ok(PreparedQuery { plan })
    }

    /// Replaces a table's contents.
    pub fn load(&self, table: &str, batches: Vec<RecordBatch>) -> Result<()> {
        let t = self
            .tables
            .get(table)
            .ok_or_else(|| DataFusionError::Plan(format!("no table named {table}")))?;
        for b in &batches {
            if b.schema().fields() != t.schema.fields() {
                return Err(DataFusionError::Plan(format!(
                    "batch for {table} has schema {:?}, expected {:?}",
                    b.schema(),
                    t.schema
                )));
            }
        }
        *t.batches
            .write()
            .map_err(|_| DataFusionError::Internal("batch table lock poisoned".into()))? = batches;
        Ok(())
    }

    /// Runs several prepared queries over the tables' current contents, each on its own task
    /// (so a multi-threaded runtime spreads them over its cores); results in query order.
    pub async fn run_all(&self, queries: &[&PreparedQuery]) -> Vec<Result<Vec<RecordBatch>>> {
        let tasks: Vec<_> = queries
            .iter()
            .map(|q| {
                let ctx = self.ctx.clone();
                let plan = q.plan.clone();
                tokio::spawn(async move { ctx.execute_logical_plan(plan).await?.collect().await })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(match t.await {
                Ok(r) => r,
                Err(e) => Err(DataFusionError::Internal(format!("query task failed: {e}"))),
            });
        }
        out
    }

    /// Runs a prepared query over the tables' current contents.
    pub async fn run(&self, query: &PreparedQuery) -> Result<Vec<RecordBatch>> {
        self.ctx
            .execute_logical_plan(query.plan.clone())
            .await?
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn prepared_once_runs_on_each_load() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("who", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let s = SqlSession::new(&[("t", schema.clone())]).expect("session");
        let q = s
            .prepare(
                "SELECT who, sum(n) AS total FROM t GROUP BY who HAVING sum(n) > 2 ORDER BY who",
            )
            .await
            .expect("prepare");
        for (names, expect) in [
            (vec!["a", "a", "b"], 1usize),
            (vec!["b", "b", "b"], 1),
            (vec!["c"], 0),
        ] {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(names.clone())),
                    Arc::new(Int64Array::from(vec![2; names.len()])),
                ],
            )
            .expect("batch");
            s.load("t", vec![batch]).expect("load");
            let out = s.run(&q).await.expect("run");
            assert_eq!(
                out.iter().map(|b| b.num_rows()).sum::<usize>(),
                expect,
                "{names:?}"
            );
        }
        assert!(s.prepare("SELECT nope FROM t").await.is_err());
        assert!(s.load("missing", vec![]).is_err());
    }
}
