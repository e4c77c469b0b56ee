//! Watching the Kubernetes API: one list/watch per configured kind (kube-rs `watcher`, with its
//! re-list on `410 Gone` and backoff on errors).
//!
//! Every watcher event is kept. Objects from an initial list or a re-list are `SNAPSHOT`s,
//! later adds and updates `UPSERT`s, and deletes `DELETE`s followed by a tombstone on the
//! compacted objects topic. Objects that vanished while the watch was down (present before a
//! re-list, absent from it) are written as deletions too: a removed RoleBinding is a signal, not
//! a gap. core/v1 Events go to the events topic as KubeEvents, Trivy Operator
//! VulnerabilityReports to the scans topic as ImageScans.
//!
//! Records are queued in watch order and acknowledged in the background; a record Kafka could not
//! take makes the watcher start over with a fresh list, so nothing is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::StreamExt;
use korvid_common::ServiceContext;
use korvid_common::kafka::{
    DeadLetterSource, DeadLetters, KafkaClientError, PendingDelivery, RecordProducer,
};
use korvid_schemas::ObjectOp;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;

use crate::objects::{ObjectIdentity, identity, kube_event, object_change, object_key};
use crate::sanitize::Sanitizer;
use crate::settings::{KindSpec, KubernetesSettings};
use crate::webhook::IngestError;

const STAGE: &str = "ingest.kube_watch";
/// Readiness component: ready once every kind has been listed once (or is not served).
pub const COMPONENT: &str = "ingest.kubernetes";
/// Records queued but not yet acknowledged, per kind, before the watcher waits.
const MAX_UNACKED: usize = 4096;

/// Where a kind's records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// ObjectChange on the compacted objects topic.
    Objects,
    /// KubeEvent on the events topic.
    Events,
    /// ImageScan on the compacted scans topic.
    VulnerabilityReports,
}

impl Route {
    fn of(spec: &KindSpec) -> Route {
        match (spec.group.as_str(), spec.kind.as_str()) {
            ("" | "events.k8s.io", "Event") => Route::Events,
            ("aquasecurity.github.io", "VulnerabilityReport") => Route::VulnerabilityReports,
            _ => Route::Objects,
        }
    }
}

#[derive(Clone)]
struct Metrics {
    events: Family<Vec<(String, String)>, Counter>,
    errors: Family<Vec<(String, String)>, Counter>,
    relists: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    fn new(ctx: &ServiceContext) -> Self {
        let t = &ctx.telemetry;
        Metrics {
            events: t.register(
                "ingest_kube_watch_events",
                "Watch events turned into records, by kind and operation",
                Family::default(),
            ),
            errors: t.register(
                "ingest_kube_watch_errors",
                "Watch errors (the watcher backs off and resumes), by kind and reason",
                Family::default(),
            ),
            relists: t.register(
                "ingest_kube_watch_lists",
                "Initial lists and re-lists completed, by kind",
                Family::default(),
            ),
        }
    }

    fn event(&self, kind: &str, op: &str) {
        self.events
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("op".into(), op.into()),
            ])
            .inc();
    }

    fn error(&self, kind: &str, reason: &str) {
        self.errors
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("reason".into(), reason.into()),
            ])
            .inc();
    }
}

/// Builds the API client from the settings: an explicit kubeconfig (and context), else
/// whatever kube-rs infers (kubeconfig, then the in-cluster service account).
async fn client(settings: &KubernetesSettings) -> Result<kube::Client, IngestError> {
    let options = kube::config::KubeConfigOptions {
        context: settings.context.clone(),
        ..Default::default()
    };
    let err = |e: String| IngestError::Kubernetes(e);
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| err(format!("ingest.kubernetes.kubeconfig: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| err(format!("ingest.kubernetes.kubeconfig: {e}")))?
        }
        None if settings.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| err(format!("ingest.kubernetes.context: {e}")))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| err(format!("no kubeconfig or in-cluster service account: {e}")))?,
    };
    kube::Client::try_from(config).map_err(|e| err(format!("cannot build the API client: {e}")))
}

/// Starts one watcher per kind; they run until shutdown.
pub async fn start(
    settings: &KubernetesSettings,
    cluster: &str,
    sanitizer: &Sanitizer,
    ctx: &ServiceContext,
) -> Result<Vec<tokio::task::JoinHandle<Result<(), KafkaClientError>>>, IngestError> {
    let specs = settings
        .kind_specs()
        .map_err(|e| IngestError::Kubernetes(e.to_string()))?;
    let client = client(settings).await?;
    ctx.telemetry.declare(COMPONENT);
    let mut known = known_objects(cluster, ctx).await?;
    let producer = ctx.kafka.producer()?;
    let dead_letters = ctx.kafka.dead_letters(producer.clone());
    let metrics = Metrics::new(ctx);
    let unlisted = Arc::new(AtomicUsize::new(specs.len()));
    tracing::info!(kinds = specs.len(), "watching the Kubernetes API");
    Ok(specs
        .into_iter()
        .map(|spec| {
            let route = Route::of(&spec);
            let topics = &ctx.kafka.topics;
            let w = KindWatch {
                topic: match route {
                    Route::Objects => topics.objects.clone(),
                    Route::Events => topics.events.clone(),
                    Route::VulnerabilityReports => topics.scans.clone(),
                },
                route,
                api_version: spec.api_version(),
                spec,
                cluster: cluster.to_string(),
                sanitizer: sanitizer.clone(),
                producer: producer.clone(),
                dead_letters: dead_letters.clone(),
                metrics: metrics.clone(),
                page_size: settings.page_size,
                unlisted: unlisted.clone(),
                counted_ready: false,
            };
            let state = WatchState {
                known: known
                    .remove(&(spec_group(&w.api_version), w.spec.kind.clone()))
                    .unwrap_or_default(),
                listing: None,
            };
            tokio::spawn(w.run(client.clone(), state, ctx.clone()))
        })
        .collect())
}

/// The API group of an `apiVersion` (`""` for the core group).
fn spec_group(api_version: &str) -> String {
    api_version
        .rsplit_once('/')
        .map_or(String::new(), |(g, _)| g.to_string())
}

/// Objects of `cluster` alive on the compacted objects topic, by (group, kind) and uid: what the
/// pipeline believes exists. The first list after a start compares against it, so objects
/// deleted while ingest was down get their deletion and tombstone too.
async fn known_objects(
    cluster: &str,
    ctx: &ServiceContext,
) -> Result<HashMap<(String, String), HashMap<String, ObjectIdentity>>, KafkaClientError> {
    let prefix = format!("{cluster}/");
    let mut decoder = ctx.kafka.decoder::<korvid_schemas::ObjectChange>();
    let mut alive: HashMap<String, ObjectIdentity> = HashMap::new();
    for (key, value) in ctx.kafka.read_to_end(&ctx.kafka.topics.objects).await? {
        let Some(key) = key.and_then(|k| String::from_utf8(k).ok()) else {
            continue;
        };
        // Imported manifests (uid `manifest-...`) never came from this API server: a list
        // cannot vouch for them either way.
        if !key.starts_with(&prefix) || key[prefix.len()..].starts_with("manifest-") {
            continue;
        }
        match value {
            None => {
                alive.remove(&key);
            }
            Some(bytes) => match decoder.decode(&bytes).await {
                Ok(c) if c.op == ObjectOp::Delete => {
                    alive.remove(&key);
                }
                Ok(c) => {
                    alive.insert(key, identity(&c));
                }
                // Not ours to judge here: enrich dead-letters what it cannot read.
                Err(_) => {}
            },
        }
    }
    let mut by_kind: HashMap<(String, String), HashMap<String, ObjectIdentity>> = HashMap::new();
    for id in alive.into_values() {
        by_kind
            .entry((spec_group(&id.api_version), id.kind.clone()))
            .or_default()
            .insert(id.uid.clone(), id);
    }
    tracing::info!(
        objects = by_kind.values().map(HashMap::len).sum::<usize>(),
        "objects known from the objects topic"
    );
    Ok(by_kind)
}

struct KindWatch {
    spec: KindSpec,
    route: Route,
    /// The topic this kind's records go to.
    topic: String,
    api_version: String,
    cluster: String,
    sanitizer: Sanitizer,
    producer: RecordProducer,
    dead_letters: DeadLetters,
    metrics: Metrics,
    page_size: u32,
    /// Kinds not yet listed once; readiness flips when it reaches zero.
    unlisted: Arc<AtomicUsize>,
    counted_ready: bool,
}

/// What the watcher knows between events.
#[derive(Default)]
struct WatchState {
    /// Objects alive as far as the watcher knows, by uid.
    known: HashMap<String, ObjectIdentity>,
    /// Uids seen in the list now in progress.
    listing: Option<HashSet<String>>,
}

impl KindWatch {
    async fn run(
        mut self,
        client: kube::Client,
        mut state: WatchState,
        ctx: ServiceContext,
    ) -> Result<(), KafkaClientError> {
        let resource = self.spec.api_resource();
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        // Each pass is one watcher; a failed delivery ends the pass and the next one re-lists.
        while !ctx.shutdown.is_triggered() {
            let failed = Arc::new(AtomicBool::new(false));
            let (acks, acker) = acknowledger(failed.clone(), self.spec.kind.clone());
            let config = watcher::Config::default().page_size(self.page_size);
            let mut stream = watcher::watcher(api.clone(), config)
                .default_backoff()
                .boxed();
            loop {
                let next = tokio::select! {
                    _ = ctx.shutdown.triggered() => break,
                    next = stream.next() => next,
                };
                let Some(next) = next else { break };
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                match next {
                    Ok(event) => self.handle(event, &mut state, &acks, &ctx).await?,
                    Err(e) => self.watch_error(&e, &ctx),
                }
            }
            drop(acks);
            let _ = acker.await;
            if failed.load(Ordering::Relaxed) && !ctx.shutdown.is_triggered() {
                tracing::warn!(kind = %self.spec.kind, "Kafka did not take a record; listing again");
                state.listing = None;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        event: Event<DynamicObject>,
        state: &mut WatchState,
        acks: &tokio::sync::mpsc::Sender<PendingDelivery>,
        ctx: &ServiceContext,
    ) -> Result<(), KafkaClientError> {
        match event {
            Event::Init => state.listing = Some(HashSet::new()),
            Event::InitApply(obj) => {
                if let Some(uid) = self.emit(ObjectOp::Snapshot, obj, state, acks).await?
                    && let Some(listing) = state.listing.as_mut()
                {
                    listing.insert(uid);
                }
            }
            Event::InitDone => {
                let listed = state.listing.take().unwrap_or_default();
                let vanished: Vec<ObjectIdentity> = state
                    .known
                    .values()
                    .filter(|o| !listed.contains(&o.uid))
                    .cloned()
                    .collect();
                for gone in vanished {
                    // Deleted while the watch was down: write what we know of it.
                    state.known.remove(&gone.uid);
                    let change = gone.deletion(&self.cluster, korvid_common::now_millis());
                    self.write_delete(&change, acks).await?;
                    self.metrics.event(&self.spec.kind, "vanished");
                }
                self.metrics
                    .relists
                    .get_or_create(&vec![("kind".into(), self.spec.kind.clone())])
                    .inc();
                self.mark_listed(ctx);
            }
            Event::Apply(obj) => {
                self.emit(ObjectOp::Upsert, obj, state, acks).await?;
            }
            Event::Delete(obj) => {
                self.emit(ObjectOp::Delete, obj, state, acks).await?;
            }
        }
        Ok(())
    }

    /// Writes one object; returns its uid when it became a record.
    async fn emit(
        &self,
        op: ObjectOp,
        obj: DynamicObject,
        state: &mut WatchState,
        acks: &tokio::sync::mpsc::Sender<PendingDelivery>,
    ) -> Result<Option<String>, KafkaClientError> {
        let op_name = match op {
            ObjectOp::Snapshot => "snapshot",
            ObjectOp::Upsert => "upsert",
            ObjectOp::Delete => "delete",
        };
        let value = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(e) => {
                self.reject("not_an_object", &e.to_string(), b"").await?;
                return Ok(None);
            }
        };
        let now = korvid_common::now_millis();
        match self.route {
            Route::Events => {
                if op == ObjectOp::Delete {
                    // Events expire by TTL; their deletion says nothing (deleting Events on
                    // purpose shows in the audit log).
                    self.metrics.event(&self.spec.kind, "expired");
                    return Ok(None);
                }
                match kube_event(&self.cluster, &value, now) {
                    Ok(ev) => {
                        let key = format!(
                            "{}/{}",
                            self.cluster,
                            ev.involved_namespace.as_deref().unwrap_or("")
                        );
                        acks.send(self.producer.enqueue(&self.topic, &key, &ev).await?)
                            .await
                            .ok();
                        self.metrics.event(&self.spec.kind, op_name);
                        Ok(Some(ev.uid))
                    }
                    Err(e) => {
                        self.reject(e.kind(), &e.to_string(), value.to_string().as_bytes())
                            .await?;
                        Ok(None)
                    }
                }
            }
            Route::VulnerabilityReports => {
                if op == ObjectOp::Delete {
                    // The scan of an image stays true when the report's workload goes.
                    self.metrics.event(&self.spec.kind, "ignored_delete");
                    return Ok(None);
                }
                match crate::scans::vulnerability_report(&value, &self.cluster, now) {
                    Ok(scan) => {
                        acks.send(
                            self.producer
                                .enqueue(&self.topic, &scan.image_digest, &scan)
                                .await?,
                        )
                        .await
                        .ok();
                        self.metrics.event(&self.spec.kind, op_name);
                        Ok(value
                            .pointer("/metadata/uid")
                            .and_then(Value::as_str)
                            .map(str::to_string))
                    }
                    Err(e) => {
                        let clean = self.sanitizer.sanitize_object(None, value);
                        self.reject(e.kind(), &e.to_string(), clean.to_string().as_bytes())
                            .await?;
                        Ok(None)
                    }
                }
            }
            Route::Objects => {
                let hint = Some((self.api_version.as_str(), self.spec.kind.as_str()));
                match object_change(&self.cluster, op, value, hint, &self.sanitizer, now) {
                    Ok(change) => {
                        let uid = change.uid.clone();
                        if op == ObjectOp::Delete {
                            state.known.remove(&uid);
                            self.write_delete(&change, acks).await?;
                        } else {
                            state.known.insert(uid.clone(), identity(&change));
                            let key = object_key(&self.cluster, &uid);
                            acks.send(self.producer.enqueue(&self.topic, &key, &change).await?)
                                .await
                                .ok();
                        }
                        self.metrics.event(&self.spec.kind, op_name);
                        Ok(Some(uid))
                    }
                    Err(e) => {
                        self.reject(e.kind(), &e.to_string(), b"").await?;
                        Ok(None)
                    }
                }
            }
        }
    }

    /// A deletion record (with the object's last state when known), then the tombstone that
    /// lets compaction forget the object.
    async fn write_delete(
        &self,
        change: &korvid_schemas::ObjectChange,
        acks: &tokio::sync::mpsc::Sender<PendingDelivery>,
    ) -> Result<(), KafkaClientError> {
        let key = object_key(&self.cluster, &change.uid);
        acks.send(self.producer.enqueue(&self.topic, &key, change).await?)
            .await
            .ok();
        acks.send(self.producer.enqueue_tombstone(&self.topic, &key).await?)
            .await
            .ok();
        Ok(())
    }

    async fn reject(&self, kind: &str, reason: &str, raw: &[u8]) -> Result<(), KafkaClientError> {
        self.metrics.error(&self.spec.kind, kind);
        tracing::warn!(kind = %self.spec.kind, reason, "object refused");
        let source = DeadLetterSource {
            cluster: Some(self.cluster.clone()),
            ..Default::default()
        };
        self.dead_letters
            .send(
                STAGE,
                kind,
                &format!("{}: {reason}", self.spec.kind),
                raw,
                source,
            )
            .await
    }

    fn watch_error(&mut self, e: &watcher::Error, ctx: &ServiceContext) {
        let code = match e {
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
            watcher::Error::WatchError(s) => Some(s.code),
            _ => None,
        };
        match code {
            Some(404) => {
                self.metrics.error(&self.spec.kind, "not_served");
                if !self.counted_ready {
                    tracing::warn!(kind = %self.spec.kind, api_version = %self.api_version,
                        "the cluster does not serve this kind; will keep trying (is the CRD installed?)");
                    self.mark_listed(ctx);
                }
            }
            Some(403) => {
                self.metrics.error(&self.spec.kind, "forbidden");
                tracing::error!(kind = %self.spec.kind, error = %e,
                    "forbidden: grant get/list/watch on this kind (deploy/rbac.yaml)");
            }
            Some(410) => {
                self.metrics.error(&self.spec.kind, "gone");
                tracing::info!(kind = %self.spec.kind, "watch expired (410 Gone); listing again");
            }
            _ => {
                self.metrics.error(&self.spec.kind, "watch");
                tracing::warn!(kind = %self.spec.kind, error = %e, "watch failed; backing off");
            }
        }
    }

    fn mark_listed(&mut self, ctx: &ServiceContext) {
        if !self.counted_ready {
            self.counted_ready = true;
            if self.unlisted.fetch_sub(1, Ordering::SeqCst) == 1 {
                tracing::info!("every watched kind is listed");
                ctx.telemetry.set_ready(COMPONENT, true);
            }
        }
    }
}

/// Awaits queued records in order; the first one Kafka refuses sets `failed`.
fn acknowledger(
    failed: Arc<AtomicBool>,
    kind: String,
) -> (
    tokio::sync::mpsc::Sender<PendingDelivery>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PendingDelivery>(MAX_UNACKED);
    let task = tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            if let Err(e) = pending.acknowledged().await {
                tracing::error!(%kind, error = %e, "record not stored");
                failed.store(true, Ordering::Relaxed);
            }
        }
    });
    (tx, task)
}
