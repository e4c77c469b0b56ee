//! The graph model half of detection: window graphs as feature tensors ([`features`]), the
//! exported GNN run by ONNX Runtime in batches ([`runtime`]), and its verdicts combined with
//! the rules' ([`fusion`]).
//!
//! The model is trained offline by `detect/model/train.py` on tables `korvid model featurize`
//! writes with the code in [`features`]; the ONNX file it exports is built into korvid.

pub mod features;
pub mod fusion;
pub mod runtime;

pub use features::{WindowGraph, window_graph};
pub use fusion::{FusionOutcome, fuse};
pub use runtime::{BatchMetrics, BatchOptions, Batcher, Model, ModelError, RuntimeOptions, Scores};

use std::time::Duration;

use crate::settings::{ModelMode, ModelSettings};

/// Starts the model as `[detect.model]` says: `None` when it is off, or (mode `auto`) when
/// ONNX Runtime is not installed, which is logged once with what to do.
pub fn start(
    settings: &ModelSettings,
    metrics: BatchMetrics,
) -> Result<Option<Batcher>, ModelError> {
    if settings.mode == ModelMode::Off {
        return Ok(None);
    }
    let bytes = match &settings.path {
        Some(p) => std::fs::read(p)
            .map_err(|e| ModelError::Model(format!("reading {}: {e}", p.display())))?,
        None => runtime::BUILTIN_MODEL.to_vec(),
    };
    let runtime = RuntimeOptions {
        library: settings.runtime_library.clone(),
        intra_threads: settings.intra_threads,
        cuda: settings.cuda,
        spin: settings.spin_wait,
    };
    let batching = BatchOptions {
        max_nodes: settings.max_batch_nodes,
        max_graphs: settings.max_batch_graphs,
        max_delay: Duration::from_millis(settings.max_delay_ms),
        workers: settings.workers,
    };
    match Batcher::start(&bytes, &runtime, batching, metrics) {
        Ok(mut b) => {
            b.override_thresholds(settings.fusion_low, settings.fusion_high);
            tracing::info!(
                version = %b.info().version,
                low = b.info().fusion_low,
                high = b.info().fusion_high,
                cuda = settings.cuda,
                "graph model loaded"
            );
            Ok(Some(b))
        }
        Err(e @ ModelError::Runtime(_)) if settings.mode == ModelMode::Auto => {
            tracing::warn!(error = %e, "graph model off, rules alone (detect.model.mode = \"auto\")");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
