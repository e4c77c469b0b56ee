//! The inventory each enrich instance keeps: it follows the whole objects and image-scan topics
//! (a global table, like Kafka Streams'), applies every record, and says it is ready only once
//! it has caught up with what the topics held at start. Windows then take the part of each
//! cluster's graph around their entities.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use korvid_common::ServiceContext;
use korvid_common::kafka::{FeedEvent, KafkaClientError};
use korvid_schemas::{Decoder, ImageScan, ObjectChange};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::inventory::{Adjacency, Graph, Inventory};

/// Shortest time between two rebuilds of a cluster's graph while objects keep changing.
const REBUILD_EVERY: Duration = Duration::from_secs(2);

/// Readiness component: ready once the inventory has caught up.
pub const COMPONENT: &str = "enrich.inventory";

#[derive(Default)]
struct ClusterState {
    inventory: Inventory,
    /// The graph of the inventory, with its adjacency, and when it was built.
    graph: Option<(Arc<Graph>, Arc<Adjacency>, Instant)>,
    /// Whether objects changed since the graph was built.
    dirty: bool,
    /// Entities changed since the last window, by namespace (`""` for cluster-scoped ones).
    changed: HashMap<String, BTreeSet<String>>,
}

impl ClusterState {
    /// The graph (and its adjacency), rebuilt after a change but at most once per
    /// [`REBUILD_EVERY`]: real clusters update pod status constantly, and a graph a second or
    /// two old is still the right neighbourhood (the changed entities are seeded regardless).
    fn current(&mut self) -> (Arc<Graph>, Arc<Adjacency>) {
        if let Some((g, a, built)) = &self.graph
            && (!self.dirty || built.elapsed() < REBUILD_EVERY)
        {
            return (g.clone(), a.clone());
        }
        let g = Arc::new(self.inventory.graph());
        let a = Arc::new(g.adjacency());
        self.graph = Some((g.clone(), a.clone(), Instant::now()));
        self.dirty = false;
        (g, a)
    }
}

/// Every cluster's inventory, shared by the follower task and the window builder.
#[derive(Clone, Default)]
pub struct Inventories {
    clusters: Arc<Mutex<HashMap<String, ClusterState>>>,
}

impl Inventories {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClusterState>> {
        self.clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The part of `cluster`'s graph within two relations of `seeds` and of whatever changed in
    /// `namespace` since the last call for it.
    pub fn around(
        &self,
        cluster: &str,
        namespace: &str,
        seeds: &BTreeSet<String>,
    ) -> Option<Graph> {
        let mut clusters = self.lock();
        let state = clusters.get_mut(cluster)?;
        let mut seeds = seeds.clone();
        if let Some(changed) = state.changed.remove(namespace) {
            seeds.extend(changed);
        }
        let (graph, adjacency) = state.current();
        drop(clusters);
        Some(graph.neighbourhood_in(&adjacency, &seeds, 2))
    }

    /// Every cluster with its whole graph.
    pub fn graphs(&self) -> Vec<(String, Arc<Graph>)> {
        let mut clusters = self.lock();
        let mut out: Vec<(String, Arc<Graph>)> = clusters
            .iter_mut()
            .map(|(name, state)| (name.clone(), state.current().0))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Objects and approximate bytes held, over all clusters.
    pub fn size(&self) -> (usize, usize) {
        self.lock().values().fold((0, 0), |(o, b), s| {
            let size = s.inventory.size();
            (o + size.objects, b + size.bytes)
        })
    }

    fn apply_object(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        decoder: &Decoder<ObjectChange>,
    ) -> Result<(), String> {
        match value {
            Some(bytes) => {
                let change = decoder.decode(bytes).map_err(|e| e.to_string())?;
                let mut clusters = self.lock();
                let state = clusters.entry(change.cluster.clone()).or_default();
                if let Some(id) = state.inventory.apply(&change) {
                    state
                        .changed
                        .entry(change.namespace.clone().unwrap_or_default())
                        .or_default()
                        .insert(id);
                }
                state.dirty = true;
                Ok(())
            }
            None => {
                // A tombstone: `cluster/uid`.
                let key = key
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .ok_or("tombstone without a key")?;
                let (cluster, uid) = key
                    .split_once('/')
                    .ok_or("tombstone key is not cluster/uid")?;
                let mut clusters = self.lock();
                if let Some(state) = clusters.get_mut(cluster)
                    && state.inventory.forget_uid(uid).is_some()
                {
                    state.dirty = true;
                }
                Ok(())
            }
        }
    }

    fn apply_scan(&self, value: Option<&[u8]>, decoder: &Decoder<ImageScan>) -> Result<(), String> {
        let Some(bytes) = value else { return Ok(()) };
        let scan = decoder.decode(bytes).map_err(|e| e.to_string())?;
        let mut clusters = self.lock();
        let state = clusters.entry(scan.cluster.clone()).or_default();
        state.inventory.apply_scan(scan);
        state.dirty = true;
        Ok(())
    }
}

/// Starts following the objects and scans topics into `inventories`; readiness flips when the
/// follower has caught up.
pub fn follow(
    inventories: Inventories,
    ctx: &ServiceContext,
) -> Result<tokio::task::JoinHandle<()>, KafkaClientError> {
    ctx.telemetry.declare(COMPONENT);
    let topics = ctx.kafka.topics.clone();
    let mut feed =
        tokio::task::block_in_place(|| ctx.kafka.follow(&[&topics.objects, &topics.scans]))?;
    let t = &ctx.telemetry;
    let records: Counter = t.register(
        "enrich_inventory_records",
        "Object and scan records applied to the inventory",
        Counter::default(),
    );
    let errors: Counter = t.register(
        "enrich_inventory_errors",
        "Object and scan records that could not be read (left out of the inventory)",
        Counter::default(),
    );
    let objects: Gauge = t.register(
        "enrich_inventory_objects",
        "Objects held in the inventory",
        Gauge::default(),
    );
    let bytes: Gauge = t.register(
        "enrich_inventory_bytes",
        "Approximate memory held by the inventory",
        Gauge::default(),
    );
    let telemetry = ctx.telemetry.clone();
    Ok(tokio::spawn(async move {
        let object_decoder = Decoder::<ObjectChange>::new();
        let scan_decoder = Decoder::<ImageScan>::new();
        let mut applied = 0u64;
        while let Some(event) = feed.recv().await {
            match event {
                FeedEvent::CaughtUp => {
                    let (n, b) = inventories.size();
                    tracing::info!(objects = n, bytes = b, "inventory caught up");
                    telemetry.set_ready(COMPONENT, true);
                }
                FeedEvent::Record(r) => {
                    let result = if r.topic == topics.objects {
                        inventories.apply_object(
                            r.key.as_deref(),
                            r.value.as_deref(),
                            &object_decoder,
                        )
                    } else {
                        inventories.apply_scan(r.value.as_deref(), &scan_decoder)
                    };
                    match result {
                        Ok(()) => {
                            records.inc();
                        }
                        Err(e) => {
                            errors.inc();
                            tracing::warn!(topic = %r.topic, error = %e, "record left out of the inventory");
                        }
                    };
                    applied += 1;
                    if applied.is_multiple_of(1024) || feed.is_empty() {
                        let (n, b) = inventories.size();
                        objects.set(n as i64);
                        bytes.set(b as i64);
                    }
                }
            }
        }
    }))
}
