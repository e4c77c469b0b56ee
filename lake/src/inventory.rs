//! The `inventory` table: the cluster objects as they are now, rebuilt from the compacted objects
//! topic each time a query scans it (latest record per key; deletes and tombstones remove the
//! object). Kafka is only contacted when a query names `inventory`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use korvid_common::kafka::{KafkaClientError, KafkaContext};
use korvid_schemas::{ObjectChange, ObjectOp};

/// Where the inventory comes from.
#[derive(Clone)]
pub struct InventorySource {
    /// Kafka (its topics name the objects topic).
    pub kafka: KafkaContext,
    /// How long to wait for a broker before the query fails.
    pub timeout: Duration,
}

/// Reading the inventory failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Kafka did not answer or the topic could not be read (external system; retriable).
    #[error(
        "inventory: cannot read {topic} from Kafka at {bootstrap}: {source} (is korvid up \
         running, or kafka.bootstrap_servers set? findings and alerts do not need Kafka)"
    )]
    Kafka {
        /// Topic.
        topic: String,
        /// Bootstrap servers tried.
        bootstrap: String,
        /// The error.
        #[source]
        source: KafkaClientError,
    },
    /// Building the table failed (a bug).
    #[error("inventory: {0}")]
    Columns(#[from] arrow::error::ArrowError),
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("cluster", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("api_version", DataType::Utf8, false),
        Field::new("namespace", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, false),
        Field::new("uid", DataType::Utf8, false),
        Field::new("resource_version", DataType::Utf8, true),
        Field::new("labels", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("object", DataType::Utf8, true),
    ]))
});

/// The `inventory` table's columns.
pub fn inventory_schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Folds the topic's records, in partition order, into the objects that exist now.
/// `records` are (key, decoded value or `None` for a tombstone).
pub fn current_objects(
    records: impl IntoIterator<Item = (String, Option<ObjectChange>)>,
) -> Vec<ObjectChange> {
    let mut by_key: HashMap<String, ObjectChange> = HashMap::new();
    for (key, value) in records {
        match value {
            Some(o) if o.op != ObjectOp::Delete => {
                by_key.insert(key, o);
            }
            _ => {
                by_key.remove(&key);
            }
        }
    }
    let mut objects: Vec<ObjectChange> = by_key.into_values().collect();
    objects.sort_by(|a, b| {
        (&a.cluster, &a.kind, &a.namespace, &a.name).cmp(&(
            &b.cluster,
            &b.kind,
            &b.namespace,
            &b.name,
        ))
    });
    objects
}

/// Objects as one batch of [`inventory_schema`].
pub fn inventory_batch(objects: &[ObjectChange]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut cols: Vec<StringBuilder> = (0..9).map(|_| StringBuilder::new()).collect();
    let mut time = TimestampMillisecondBuilder::with_capacity(objects.len()).with_timezone("UTC");
    let mut object = StringBuilder::new();
    for o in objects {
        let labels: std::collections::BTreeMap<_, _> = o.labels.iter().collect();
        let labels = serde_json::to_string(&labels).unwrap_or_else(|_| "{}".into());
        let op = match o.op {
            ObjectOp::Upsert => "upsert",
            ObjectOp::Snapshot => "snapshot",
            ObjectOp::Delete => "delete",
        };
        cols[0].append_value(&o.cluster);
        cols[1].append_value(&o.kind);
        cols[2].append_value(&o.api_version);
        cols[3].append_option(o.namespace.as_deref());
        cols[4].append_value(&o.name);
        cols[5].append_value(&o.uid);
        cols[6].append_option(o.resource_version.as_deref());
        cols[7].append_value(labels);
        cols[8].append_value(op);
        time.append_value(o.event_time);
        object.append_option(o.object_json.as_deref());
    }
    let mut arrays: Vec<ArrayRef> = cols
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    arrays.push(Arc::new(time.finish()));
    arrays.push(Arc::new(object.finish()));
    RecordBatch::try_new(inventory_schema(), arrays)
}

impl InventorySource {
    /// Reads the objects topic to its end and returns the current objects. Undecodable records
    /// are skipped with a warning (the pipeline has dead-lettered them already).
    pub async fn load(&self) -> Result<Vec<ObjectChange>, InventoryError> {
        let topic = self.kafka.topics.objects.clone();
        let wrap = |source| InventoryError::Kafka {
            topic: topic.clone(),
            bootstrap: self.kafka.bootstrap.clone(),
            source,
        };
        self.kafka
            .wait_for_broker(self.timeout)
            .await
            .map_err(wrap)?;
        let raw = self.kafka.read_to_end(&topic).await.map_err(wrap)?;
        let mut decoder = self.kafka.decoder::<ObjectChange>();
        let mut records = Vec::with_capacity(raw.len());
        let mut skipped = 0usize;
        for (key, value) in raw {
            let value = match value {
                Some(bytes) => match decoder.decode(&bytes).await {
                    Ok(o) => Some(o),
                    Err(e) => {
                        skipped += 1;
                        tracing::debug!(error = %e, "undecodable object record skipped");
                        continue;
                    }
                },
                None => None,
            };
            let key = match (key, &value) {
                (Some(k), _) => String::from_utf8_lossy(&k).into_owned(),
                (None, Some(o)) => format!("{}/{}", o.cluster, o.uid),
                (None, None) => continue,
            };
            records.push((key, value));
        }
        if skipped > 0 {
            tracing::warn!(skipped, "inventory: undecodable object records skipped");
        }
        Ok(current_objects(records))
    }
}

/// The `inventory` table provider.
#[derive(Clone)]
pub struct InventoryTable {
    source: InventorySource,
}

impl std::fmt::Debug for InventoryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InventoryTable").finish_non_exhaustive()
    }
}

impl InventoryTable {
    /// A table reading from `source` at scan time.
    pub fn new(source: InventorySource) -> Self {
        InventoryTable { source }
    }
}

#[async_trait]
impl TableProvider for InventoryTable {
    fn schema(&self) -> SchemaRef {
        inventory_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let objects = self
            .source
            .load()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = inventory_batch(&objects)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            inventory_schema(),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, op: ObjectOp) -> ObjectChange {
        ObjectChange {
            cluster: "c".into(),
            event_time: 1,
            op,
            uid: format!("uid-{name}"),
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some("shop".into()),
            name: name.into(),
            resource_version: None,
            labels: [("app".to_string(), "web".to_string())].into(),
            object_json: None,
        }
    }

    #[test]
    fn latest_record_per_key_wins_and_deletes_remove() {
        let objects = current_objects(vec![
            ("c/a".into(), Some(object("a", ObjectOp::Snapshot))),
            ("c/b".into(), Some(object("b", ObjectOp::Snapshot))),
            ("c/c".into(), Some(object("c", ObjectOp::Upsert))),
            ("c/a".into(), Some(object("a2", ObjectOp::Upsert))),
            ("c/b".into(), Some(object("b", ObjectOp::Delete))),
            ("c/c".into(), None),
        ]);
        let names: Vec<_> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a2"]);
        let batch = inventory_batch(&objects).expect("batch");
        assert_eq!(batch.num_rows(), 1);
        let labels = arrow::util::display::array_value_to_string(
            batch.column_by_name("labels").expect("labels"),
            0,
        )
        .expect("display");
        assert_eq!(labels, r#"{"app":"web"}"#);
    }
}
