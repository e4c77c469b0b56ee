//! The exported GNN, run by ONNX Runtime: the library is loaded at run time (`ort`'s
//! load-dynamic; `make setup` installs it), window graphs are batched as one disjoint union up
//! to a node or graph budget or a delay, on dedicated threads with a session each, on the CPU
//! or, when asked and present, the CUDA execution provider.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::Tensor;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sha2::Digest as _;

use super::features::{FEATURE_VERSION, WindowGraph, feature_count, feature_names};

/// The model korvid ships (`detect/model/korvid-gnn.onnx`, trained by `detect/model/train.py`).
pub const BUILTIN_MODEL: &[u8] = include_bytes!("../../model/korvid-gnn.onnx");

/// ONNX Runtime version the project installs and `ort` is built against.
pub const RUNTIME_VERSION: &str = "1.31.1";

/// Why the model cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The ONNX Runtime library was not found or did not load.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The model file does not load or was trained on other features.
    #[error("model: {0}")]
    Model(String),
    /// Inference failed.
    #[error("inference: {0}")]
    Inference(String),
    /// The inference threads are gone.
    #[error("the inference threads stopped")]
    Stopped,
}

/// Where and how sessions run.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// `libonnxruntime.so`; default: `ORT_DYLIB_PATH`, then the copy `make setup` installs.
    pub library: Option<PathBuf>,
    /// Threads inside one inference (0: ONNX Runtime's default).
    pub intra_threads: usize,
    /// Use the CUDA execution provider; an error when it cannot be registered.
    pub cuda: bool,
    /// Let ONNX Runtime's idle threads spin waiting for work: a little less latency per run,
    /// paid in CPU burnt between runs. Off by default, because detect shares its cores with
    /// the rest of the pipeline.
    pub spin: bool,
}

/// Scores for one window graph.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    /// Per entity, the probability it takes part in an attack.
    pub risk: Vec<f32>,
    /// Per entity, row-major, one probability per tactic (`Tactic::ALL` order).
    pub tactics: Vec<f32>,
}

impl Scores {
    /// One entity's tactic scores.
    pub fn tactics_of(&self, node: usize) -> &[f32] {
        let t = korvid_schemas::Tactic::ALL.len();
        &self.tactics[node * t..(node + 1) * t]
    }
}

/// What the model file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// First 12 hex digits of the file's sha256.
    pub version: String,
    /// Fusion: a rule finding on an entity scored below this is lowered.
    pub fusion_low: f32,
    /// Fusion: an entity scored at or above this is an attack path.
    pub fusion_high: f32,
}

/// The ONNX Runtime library to load: the explicit path, `ORT_DYLIB_PATH`, or the copy under
/// `$KORVID_TOOLS` (default `~/.cache/korvid/tools`) that `make setup` installs.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = explicit.map(Path::to_path_buf).into_iter().collect();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        candidates.push(p.into());
    }
    let tools = std::env::var_os("KORVID_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/korvid/tools")));
    if let Some(t) = tools {
        candidates.push(t.join(format!(
            "onnxruntime-{RUNTIME_VERSION}/onnxruntime/capi/libonnxruntime.so.{RUNTIME_VERSION}"
        )));
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(ModelError::Runtime(format!(
        "libonnxruntime {RUNTIME_VERSION} not found (tried {}); run `make setup`, or set \
         ORT_DYLIB_PATH or detect.model.runtime_library",
        if tried.is_empty() {
            "nothing: no HOME".into()
        } else {
            tried.join(", ")
        }
    )))
}

/// Loads the library and creates the environment once per process; later calls return the
/// first outcome.
fn environment(
    library: Option<&Path>,
) -> Result<&'static ort::environment::Environment, ModelError> {
    static ENV: OnceLock<Result<ort::environment::Environment, ModelError>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = find_library(library)?;
        let builder = ort::init_from(&path)
            .map_err(|e| ModelError::Runtime(format!("{}: {e}", path.display())))?;
        let env = builder
            .with_name("korvid")
            .build()
            .map_err(|e| ModelError::Runtime(e.to_string()))?;
        env.set_log_level(ort::logging::LogLevel::Error);
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok(env)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// One session of the model.
pub struct Model {
    session: Session,
    info: ModelInfo,
}

impl Model {
    /// Loads a model (ONNX bytes), checking it was trained on this feature layout.
    pub fn load(bytes: &[u8], options: &RuntimeOptions) -> Result<Model, ModelError> {
        let env = environment(options.library.as_deref())?;
        let err = |e: ort::Error| ModelError::Model(e.to_string());
        let builder_err =
            |e: ort::Error<ort::session::builder::SessionBuilder>| ModelError::Model(e.to_string());
        let mut builder = Session::builder(env)
            .map_err(err)?
            .with_intra_op_spinning(options.spin)
            .map_err(builder_err)?
            .with_inter_op_spinning(options.spin)
            .map_err(builder_err)?;
        if options.intra_threads > 0 {
            builder = builder
                .with_intra_threads(options.intra_threads)
                .map_err(builder_err)?;
        }
        if options.cuda {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| ModelError::Runtime(format!("CUDA execution provider: {e}")))?;
        }
        let session = builder.commit_from_memory(bytes).map_err(err)?;
        let meta = session.metadata().map_err(err)?;
        let custom = |k: &str| meta.custom(k);
        let version = custom("korvid.feature_version").unwrap_or_default();
        if version != FEATURE_VERSION.to_string() {
            return Err(ModelError::Model(format!(
                "trained on feature layout {version:?}, this korvid computes layout \
                 {FEATURE_VERSION}: retrain it (detect/model/train.py)"
            )));
        }
        let names = feature_names().join("\n");
        if custom("korvid.features_sha256").as_deref()
            != Some(hex::encode(sha2::Sha256::digest(names.as_bytes())).as_str())
        {
            return Err(ModelError::Model(
                "trained on other feature names than this korvid computes: retrain it".into(),
            ));
        }
        let number = |k: &str, default: f32| {
            custom(k)
                .and_then(|v| v.parse::<f32>().ok())
                .unwrap_or(default)
        };
        let info = ModelInfo {
            version: hex::encode(sha2::Sha256::digest(bytes))[..12].to_string(),
            fusion_low: number("korvid.fusion_low", 0.0),
            fusion_high: number("korvid.fusion_high", 1.01),
        };
        drop(meta);
        Ok(Model { session, info })
    }

    /// What the model says about itself.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Scores several graphs in one run, as one disjoint union.
    pub fn run(&mut self, graphs: &[&WindowGraph]) -> Result<Vec<Scores>, ModelError> {
        let width = feature_count();
        let nodes: usize = graphs.iter().map(|g| g.node_count()).sum();
        if nodes == 0 {
            return Ok(graphs.iter().map(|_| Scores::default()).collect());
        }
        let edges: usize = graphs.iter().map(|g| g.edge_src.len()).sum();
        let mut x = Vec::with_capacity(nodes * width);
        let mut index = vec![0i64; 2 * edges];
        let mut types = Vec::with_capacity(edges);
        let (mut offset, mut e) = (0i64, 0usize);
        for g in graphs {
            x.extend_from_slice(&g.features);
            for (s, d) in g.edge_src.iter().zip(&g.edge_dst) {
                index[e] = s + offset;
                index[edges + e] = d + offset;
                e += 1;
            }
            types.extend_from_slice(&g.edge_type);
            offset += g.node_count() as i64;
        }
        let fail = |e: ort::Error| ModelError::Inference(e.to_string());
        let inputs = ort::inputs![
            "x" => Tensor::from_array(([nodes, width], x)).map_err(fail)?,
            "edge_index" => Tensor::from_array(([2, edges], index)).map_err(fail)?,
            "edge_type" => Tensor::from_array(([edges], types)).map_err(fail)?,
        ];
        let outputs = self.session.run(inputs).map_err(fail)?;
        let (_, risk) = outputs["risk"].try_extract_tensor::<f32>().map_err(fail)?;
        let (_, tactics) = outputs["tactics"]
            .try_extract_tensor::<f32>()
            .map_err(fail)?;
        let t = korvid_schemas::Tactic::ALL.len();
        if risk.len() != nodes || tactics.len() != nodes * t {
            return Err(ModelError::Inference(format!(
                "model returned {} risks and {} tactic scores for {nodes} entities",
                risk.len(),
                tactics.len()
            )));
        }
        let mut out = Vec::with_capacity(graphs.len());
        let mut at = 0;
        for g in graphs {
            let n = g.node_count();
            out.push(Scores {
                risk: risk[at..at + n].to_vec(),
                tactics: tactics[at * t..(at + n) * t].to_vec(),
            });
            at += n;
        }
        Ok(out)
    }
}

/// How graphs are grouped into one inference.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Stop adding graphs once a batch holds this many entities.
    pub max_nodes: usize,
    /// At most this many graphs per batch.
    pub max_graphs: usize,
    /// How long the first graph of a batch waits for company.
    pub max_delay: Duration,
    /// Inference threads, one session each.
    pub workers: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_nodes: 20_000,
            max_graphs: 256,
            max_delay: Duration::from_millis(5),
            workers: 1,
        }
    }
}

/// What the inference threads report: graphs per batch and how long each batch ran.
#[derive(Debug, Clone)]
pub struct BatchMetrics {
    /// Graphs per inference run (1 .. 512).
    pub graphs: Histogram,
    /// Seconds per inference run (1 ms .. 16 s).
    pub seconds: Histogram,
}

impl BatchMetrics {
    /// Histograms nobody reads until registered (benchmarks, tools).
    pub fn unregistered() -> Self {
        BatchMetrics {
            graphs: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }

    fn observe(&self, graphs: usize, took: Duration) {
        self.graphs.observe(graphs as f64);
        self.seconds.observe(took.as_secs_f64());
    }
}

struct Job {
    graph: Arc<WindowGraph>,
    reply: tokio::sync::oneshot::Sender<Result<Scores, ModelError>>,
}

/// Batched inference on dedicated threads; cheap to share (`Arc`) between tasks.
pub struct Batcher {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    info: ModelInfo,
}

impl Batcher {
    /// Loads one session per worker and starts the workers, which report to `metrics`.
    pub fn start(
        model: &[u8],
        runtime: &RuntimeOptions,
        batching: BatchOptions,
        metrics: BatchMetrics,
    ) -> Result<Batcher, ModelError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(batching.max_graphs.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        let mut info = None;
        for i in 0..batching.workers.max(1) {
            let session = Model::load(model, runtime)?;
            info.get_or_insert_with(|| session.info().clone());
            let (rx, batching, metrics) = (rx.clone(), batching.clone(), metrics.clone());
            let handle = std::thread::Builder::new()
                .name(format!("korvid-model-{i}"))
                .spawn(move || serve(session, &rx, &batching, &metrics))
                .map_err(|e| ModelError::Runtime(format!("starting an inference thread: {e}")))?;
            threads.push(handle);
        }
        Ok(Batcher {
            jobs: Some(tx),
            threads,
            info: info.expect("at least one worker"),
        })
    }

    /// What the model says about itself.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Replaces the fusion thresholds the model file carries.
    pub fn override_thresholds(&mut self, low: Option<f32>, high: Option<f32>) {
        if let Some(low) = low {
            self.info.fusion_low = low;
        }
        if let Some(high) = high {
            self.info.fusion_high = high;
        }
    }

    /// Scores one window graph (waits for its batch).
    pub async fn score(&self, graph: Arc<WindowGraph>) -> Result<Scores, ModelError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(ModelError::Stopped)?.clone();
        // The queue is bounded: a full queue waits here, off the async threads.
        tokio::task::spawn_blocking(move || jobs.send(Job { graph, reply }))
            .await
            .map_err(|_| ModelError::Stopped)?
            .map_err(|_| ModelError::Stopped)?;
        answer.await.map_err(|_| ModelError::Stopped)?
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A worker: takes a first graph, waits up to `max_delay` for more within the budgets, runs
/// the batch, answers each caller.
fn serve(mut model: Model, jobs: &Mutex<Receiver<Job>>, b: &BatchOptions, metrics: &BatchMetrics) {
    loop {
        let batch = {
            let Ok(rx) = jobs.lock() else { return };
            let Ok(first) = rx.recv() else { return };
            let deadline = Instant::now() + b.max_delay;
            let mut nodes = first.graph.node_count();
            let mut batch = vec![first];
            while batch.len() < b.max_graphs && nodes < b.max_nodes {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => {
                        nodes += job.graph.node_count();
                        batch.push(job);
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            batch
        };
        let graphs: Vec<&WindowGraph> = batch.iter().map(|j| j.graph.as_ref()).collect();
        let started = Instant::now();
        let result = model.run(&graphs);
        metrics.observe(graphs.len(), started.elapsed());
        match result {
            Ok(scores) => {
                for (job, s) in batch.into_iter().zip(scores) {
                    let _ = job.reply.send(Ok(s));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
