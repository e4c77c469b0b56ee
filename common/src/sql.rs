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
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::prelude::{SessionConfig, SessionContext};

/// A table whose batches are replaced wholesale.
#[derive(Debug)]
pub struct BatchTable {
    schema: SchemaRef,
    batches: Arc<RwLock<Vec<RecordBatch>>>,
}

impl BatchTable {
    fn new(schema: SchemaRef) -> Self {
        BatchTable {
            schema,
            batches: Arc::new(RwLock::new(Vec::new())),
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
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(SwapExec {
            batches: self.batches.clone(),
            projection: projection.cloned(),
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(schema.clone()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            schema,
        }))
    }
}

/// Scans a [`BatchTable`]'s batches as they are when the plan *executes*, so one physical plan
/// serves every window.
#[derive(Debug)]
struct SwapExec {
    batches: Arc<RwLock<Vec<RecordBatch>>>,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
    schema: SchemaRef,
}

impl DisplayAs for SwapExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SwapExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for SwapExec {
    fn name(&self) -> &'static str {
        "SwapExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batches = self
            .batches
            .read()
            .map_err(|_| DataFusionError::Internal("batch table lock poisoned".into()))?
            .clone();
        // The stream advertises the schema it is given: the projected one (operators such as a
        // hash join's build side size their output from it).
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            self.projection.clone(),
        )?))
    }
}

/// A query parsed and planned (logically and physically) against a session's tables.
#[derive(Clone, Debug)]
pub struct PreparedQuery {
    plan: LogicalPlan,
    physical: Arc<dyn ExecutionPlan>,
}

impl PreparedQuery {
    /// The optimised logical plan (filters pushed down to the scans they constrain).
    pub fn logical_plan(&self) -> &LogicalPlan {
        &self.plan
    }

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
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        // Physical plans are reused across windows; dynamic filters carry state between runs.
        config
            .options_mut()
            .optimizer
            .enable_dynamic_filter_pushdown = false;
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
        let state = self.ctx.state();
        let logical = state.create_logical_plan(sql).await?;
        // Physical planning optimises on its own; the optimised logical plan is kept for
        // readers of its shape (which filters sit on which scan).
        let physical = state.create_physical_plan(&logical).await?;
        let plan = state.optimize(&logical)?;
        Ok(PreparedQuery { plan, physical })
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
                let task = self.ctx.task_ctx();
                let plan = q.physical.clone();
                tokio::spawn(async move {
                    datafusion::physical_plan::collect(reset_plan_states(plan)?, task).await
                })
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
        // A fresh copy of the plan's stateful operators (hash-join build sides and the like)
        // for every execution; the scans read the tables' current batches.
        let plan = reset_plan_states(query.physical.clone())?;
        datafusion::physical_plan::collect(plan, self.ctx.task_ctx()).await
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

    #[tokio::test]
    async fn outer_joins_over_projected_scans_run() {
        // A left join builds its hash table from a scan that reads only some columns; the
        // scan's stream must advertise that projected schema (it once advertised the table's
        // and the build side failed on the column count).
        let schema = Arc::new(Schema::new(vec![
            Field::new("who", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let s = SqlSession::new(&[("t", schema.clone())]).expect("session");
        let q = s
            .prepare("SELECT a.who FROM t a LEFT JOIN t b ON a.who = b.who AND b.n > 5")
            .await
            .expect("prepare");
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![1, 9])),
            ],
        )
        .expect("batch");
        s.load("t", vec![batch]).expect("load");
        let out = s.run(&q).await.expect("run");
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reused_join_plans_see_each_load_not_the_first() {
        // Hash joins keep their build side in the plan; a reused plan must rebuild it.
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let s = SqlSession::new(&[("l", schema.clone()), ("r", schema.clone())]).expect("session");
        let q = s
            .prepare("SELECT l.k, l.n + r.n AS total FROM l JOIN r ON l.k = r.k ORDER BY l.k")
            .await
            .expect("prepare");
        let batch = |keys: &[&str], n: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(keys.to_vec())),
                    Arc::new(Int64Array::from(vec![n; keys.len()])),
                ],
            )
            .expect("batch")
        };
        for (left, right, n, expect) in [
            (vec!["a", "b"], vec!["a"], 1, vec!["a"]),
            (vec!["c", "d"], vec!["d", "c"], 10, vec!["c", "d"]),
            (vec!["a"], vec!["b"], 100, vec![]),
        ] {
            s.load("l", vec![batch(&left, n)]).expect("load l");
            s.load("r", vec![batch(&right, n)]).expect("load r");
            for out in [s.run(&q).await, s.run_all(&[&q, &q]).await.remove(1)] {
                let out = out.expect("run");
                let mut keys = Vec::new();
                for b in &out {
                    let k = b
                        .column(0)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .expect("keys");
                    let t = b
                        .column(1)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .expect("totals");
                    for i in 0..b.num_rows() {
                        assert_eq!(t.value(i), 2 * n, "totals from this load");
                        keys.push(k.value(i).to_string());
                    }
                }
                assert_eq!(keys, expect);
            }
        }
    }
}
