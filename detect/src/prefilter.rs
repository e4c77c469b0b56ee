//! Which rules cannot match a window, decided from the window's contents before any query runs.
//!
//! Most rules look for a few resources, verbs, node kinds or edge types (`resource = 'secrets'`,
//! `kind = 'Container'`, `type IN ('exec', 'attach')`), while a window's traffic touches only some
//! of them. At start-up each rule's optimised plan is read for the equality and `IN` filters that
//! sit directly on a table scan, and for the operators that turn an empty input into an empty
//! result (filters, projections, grouped aggregates, inner and semi joins; a union only when all
//! its inputs are empty). Per window, the distinct values of the few columns those filters name
//! are collected; a rule whose plan is certainly empty for them is not run. The decision is
//! conservative: any operator or predicate shape not understood here means "run the rule".

use std::collections::HashSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Distinct, Expr, LogicalPlan, Operator};

/// When a rule's result is certainly empty.
#[derive(Debug, Clone, PartialEq)]
enum Empty {
    /// Never known to be empty.
    Never,
    /// When the column (an index into [`Prefilter::columns`]) holds none of the values.
    Absent { column: usize, values: Vec<String> },
    /// When any of these is.
    Any(Vec<Empty>),
    /// When all of these are.
    All(Vec<Empty>),
}

/// The per-rule emptiness conditions of a catalog, and the columns they read.
#[derive(Debug, Default)]
pub struct Prefilter {
    /// (table, column) pairs whose distinct values decide.
    columns: Vec<(String, String)>,
    rules: Vec<Empty>,
}

/// The distinct values of the deciding columns in one window (`None`: not known, e.g. a column
/// type this does not read, so nothing depending on it is skipped).
pub struct Present(Vec<Option<HashSet<String>>>);

impl Prefilter {
    /// Reads each plan (in rule order).
    pub fn new<'a>(plans: impl IntoIterator<Item = &'a LogicalPlan>) -> Self {
        let mut p = Prefilter::default();
        for plan in plans {
            let e = p.empty_when(plan);
            p.rules.push(simplify(e));
        }
        p
    }

    /// How many rules have a condition at all (the rest always run).
    pub fn decidable(&self) -> usize {
        self.rules.iter().filter(|e| **e != Empty::Never).count()
    }

    /// The deciding columns' values in a window, from its tables' batches.
    pub fn present<'b>(&self, table: impl Fn(&str) -> &'b [RecordBatch]) -> Present {
        Present(
            self.columns
                .iter()
                .map(|(t, c)| distinct_strings(table(t), c))
                .collect(),
        )
    }

    /// Whether rule `index` certainly finds nothing in the window described by `present`.
    pub fn skips(&self, index: usize, present: &Present) -> bool {
        self.rules.get(index).is_some_and(|e| is_empty(e, present))
    }

    fn column(&mut self, table: &str, column: &str) -> usize {
        let key = (table.to_string(), column.to_string());
        match self.columns.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                self.columns.push(key);
                self.columns.len() - 1
            }
        }
    }

    fn empty_when(&mut self, plan: &LogicalPlan) -> Empty {
        match plan {
            LogicalPlan::Filter(f) => {
                let mut any = vec![self.empty_when(&f.input)];
                if let Some(table) = scanned_table(&f.input) {
                    any.extend(self.required(&table, &f.predicate));
                }
                Empty::Any(any)
            }
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table().to_string();
                let mut any = Vec::new();
                for filter in &scan.filters {
                    any.extend(self.required(&table, filter));
                }
                Empty::Any(any)
            }
            LogicalPlan::Projection(p) => self.empty_when(&p.input),
            LogicalPlan::SubqueryAlias(a) => self.empty_when(&a.input),
            LogicalPlan::Sort(s) => self.empty_when(&s.input),
            LogicalPlan::Limit(l) => self.empty_when(&l.input),
            LogicalPlan::Window(w) => self.empty_when(&w.input),
            LogicalPlan::Distinct(Distinct::All(input)) => self.empty_when(input),
            LogicalPlan::Distinct(Distinct::On(d)) => self.empty_when(&d.input),
            // Without GROUP BY an aggregate returns one row even for no input.
            LogicalPlan::Aggregate(a) if !a.group_expr.is_empty() => self.empty_when(&a.input),
            LogicalPlan::Join(j) => {
                let (l, r) = (self.empty_when(&j.left), self.empty_when(&j.right));
                match j.join_type {
                    JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => {
                        Empty::Any(vec![l, r])
                    }
                    JoinType::Left | JoinType::LeftAnti | JoinType::LeftMark => l,
                    JoinType::Right | JoinType::RightAnti | JoinType::RightMark => r,
                    JoinType::Full => Empty::All(vec![l, r]),
                }
            }
            LogicalPlan::Union(u) => {
                Empty::All(u.inputs.iter().map(|i| self.empty_when(i)).collect())
            }
            _ => Empty::Never,
        }
    }

    /// The conditions under which `predicate` (over `table`'s rows) keeps no row.
    fn required(&mut self, table: &str, predicate: &Expr) -> Vec<Empty> {
        split_conjunction(predicate)
            .into_iter()
            .filter_map(one_of)
            .map(|(column, values)| Empty::Absent {
                column: self.column(table, &column),
                values,
            })
            .collect()
    }
}

/// The table a filter reads directly (through aliases), if it does.
fn scanned_table(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::TableScan(scan) => Some(scan.table_name.table().to_string()),
        LogicalPlan::SubqueryAlias(a) => scanned_table(&a.input),
        _ => None,
    }
}

/// `column = 'x'`, `column IN ('x', 'y')`, or an OR of those on one column: the column and the
/// values a row must hold to pass.
fn one_of(expr: &Expr) -> Option<(String, Vec<String>)> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Eq => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), lit) | (lit, Expr::Column(c)) => {
                    Some((c.name.clone(), vec![text_literal(lit)?]))
                }
                _ => None,
            },
            Operator::Or => {
                let (a, mut va) = one_of(left)?;
                let (b, vb) = one_of(right)?;
                (a == b).then(|| {
                    va.extend(vb);
                    (a, va)
                })
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated => match list.expr.as_ref() {
            Expr::Column(c) => {
                let values: Option<Vec<String>> = list.list.iter().map(text_literal).collect();
                Some((c.name.clone(), values?))
            }
            _ => None,
        },
        _ => None,
    }
}

fn text_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    }
}

fn simplify(e: Empty) -> Empty {
    match e {
        Empty::Any(list) => {
            let mut list: Vec<Empty> = list
                .into_iter()
                .map(simplify)
                .filter(|e| *e != Empty::Never)
                .collect();
            match list.len() {
                0 => Empty::Never,
                1 => list.pop().unwrap_or(Empty::Never),
                _ => Empty::Any(list),
            }
        }
        Empty::All(list) => {
            let list: Vec<Empty> = list.into_iter().map(simplify).collect();
            if list.is_empty() || list.contains(&Empty::Never) {
                Empty::Never
            } else {
                Empty::All(list)
            }
        }
        other => other,
    }
}

fn is_empty(e: &Empty, present: &Present) -> bool {
    match e {
        Empty::Never => false,
        Empty::Absent { column, values } => match present.0.get(*column) {
            Some(Some(seen)) => !values.iter().any(|v| seen.contains(v)),
            _ => false,
        },
        Empty::Any(list) => list.iter().any(|e| is_empty(e, present)),
        Empty::All(list) => !list.is_empty() && list.iter().all(|e| is_empty(e, present)),
    }
}

fn distinct_strings(batches: &[RecordBatch], column: &str) -> Option<HashSet<String>> {
    let mut seen = HashSet::new();
    for b in batches {
        let col = b.column_by_name(column)?;
        if col.data_type() != &DataType::Utf8 {
            return None;
        }
        let strings = col.as_string::<i32>();
        for i in 0..strings.len() {
            if strings.is_valid(i) && !seen.contains(strings.value(i)) {
                seen.insert(strings.value(i).to_string());
            }
        }
    }
    Some(seen)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    use korvid_common::sql::SqlSession;

    use super::*;

    fn table(rows: &[(&str, &str)]) -> (Arc<Schema>, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("resource", DataType::Utf8, true),
            Field::new("verb", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch");
        (schema, batch)
    }

    /// For each query: (skipped, rows it really returns) over the given rows.
    async fn judge(queries: &[&str], rows: &[(&str, &str)]) -> Vec<(bool, usize)> {
        let (schema, batch) = table(rows);
        let session = SqlSession::new(&[("activity", schema)]).expect("session");
        let mut prepared = Vec::new();
        for q in queries {
            prepared.push(session.prepare(q).await.expect("plan"));
        }
        let pre = Prefilter::new(prepared.iter().map(|p| p.logical_plan()));
        let batches = vec![batch];
        let present = pre.present(|_| &batches);
        session.load("activity", batches.clone()).expect("load");
        let mut out = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            let n: usize = session
                .run(p)
                .await
                .expect("run")
                .iter()
                .map(RecordBatch::num_rows)
                .sum();
            out.push((pre.skips(i, &present), n));
        }
        out
    }

    const QUERIES: [&str; 7] = [
        "SELECT verb FROM activity WHERE resource = 'secrets'",
        "SELECT verb FROM activity WHERE resource IN ('pods', 'secrets') AND verb = 'get'",
        "SELECT resource, count(*) FROM activity WHERE verb = 'delete' GROUP BY resource",
        // No GROUP BY: one row even when nothing passes; never skipped.
        "SELECT count(*) AS n FROM activity WHERE resource = 'secrets'",
        "SELECT a.verb FROM activity a JOIN activity b ON a.verb = b.verb WHERE a.resource = 'secrets'",
        "SELECT a.verb FROM activity a LEFT JOIN activity b ON a.verb = b.verb AND b.resource = 'secrets'",
        "SELECT verb FROM activity WHERE resource = 'secrets' UNION ALL SELECT verb FROM activity WHERE resource = 'pods'",
    ];

    #[tokio::test]
    async fn skipped_rules_are_exactly_ones_that_find_nothing() {
        for rows in [
            &[("pods", "get"), ("configmaps", "watch")][..],
            &[("secrets", "get"), ("pods", "delete")][..],
            &[("leases", "update")][..],
            &[][..],
        ] {
            for (i, (skipped, n)) in judge(&QUERIES, rows).await.into_iter().enumerate() {
                if skipped {
                    assert_eq!(n, 0, "query {i} skipped but returns rows over {rows:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn simple_filters_are_understood() {
        let out = judge(&QUERIES, &[("leases", "update")]).await;
        let skipped: Vec<bool> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, [true, true, true, false, true, false, true]);
        let out = judge(&QUERIES, &[("pods", "get")]).await;
        let skipped: Vec<bool> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, [true, false, true, false, true, false, false]);
    }
}
