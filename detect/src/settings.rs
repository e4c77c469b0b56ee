//! `[detect]` settings.

use std::path::PathBuf;

use korvid_common::settings::{SettingsError, Validate};
use serde::Deserialize;

/// `[detect]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectSettings {
    /// Load the rules shipped inside korvid.
    pub builtin_rules: bool,
    /// Extra directories of rule files (`*.yaml`), loaded after the built-in ones. A rule with
    /// the id of a built-in rule replaces it.
    pub rules_dirs: Vec<PathBuf>,
    /// Rule ids to switch off.
    pub disabled_rules: Vec<String>,
    /// A file of accepted risks (owner, reason, expiry; see `docs/rules.md`): findings they
    /// cover are not published; expired ones stop applying and are logged.
    pub exceptions: Option<PathBuf>,
    /// The graph model (`[detect.model]`).
    pub model: ModelSettings,
}

/// Whether detect runs the graph model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMode {
    /// Use it when ONNX Runtime is found; otherwise say so once and run the rules alone.
    Auto,
    /// Require it: detect does not start without it.
    On,
    /// Rules alone.
    Off,
}

/// `[detect.model]`: the graph model that re-scores rule findings and raises its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// `auto`, `on` or `off`.
    pub mode: ModelMode,
    /// An ONNX file to use instead of the built-in model (it must be trained on this
    /// korvid's feature layout; detect checks).
    pub path: Option<PathBuf>,
    /// `libonnxruntime.so`; default `ORT_DYLIB_PATH`, then the copy `make setup` installs.
    pub runtime_library: Option<PathBuf>,
    /// Run on the CUDA execution provider (onnxruntime-gpu); an error when unavailable.
    pub cuda: bool,
    /// Inference threads, one session each.
    pub workers: usize,
    /// Threads inside one inference (0: ONNX Runtime's default, one per core).
    pub intra_threads: usize,
    /// Let those threads spin-wait between runs (less latency per run, more CPU; off: detect
    /// shares its cores with the rest of the pipeline).
    pub spin_wait: bool,
    /// A batch stops growing at this many entities...
    pub max_batch_nodes: usize,
    /// ...or this many window graphs...
    pub max_batch_graphs: usize,
    /// ...or when its first window has waited this long, in milliseconds.
    pub max_delay_ms: u64,
    /// Override the model's own threshold below which a rule finding is lowered (0 never
    /// lowers; see detect/model/MODEL.md for the trade-off).
    pub fusion_low: Option<f32>,
    /// Override the model's own threshold from which the model raises findings (above 1:
    /// never).
    pub fusion_high: Option<f32>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            mode: ModelMode::Auto,
            path: None,
            runtime_library: None,
            cuda: false,
            workers: 1,
            intra_threads: 0,
            spin_wait: false,
            max_batch_nodes: 20_000,
            max_batch_graphs: 64,
            max_delay_ms: 5,
            fusion_low: None,
            fusion_high: None,
        }
    }
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            builtin_rules: true,
            rules_dirs: Vec::new(),
            disabled_rules: Vec::new(),
            exceptions: None,
            model: ModelSettings::default(),
        }
    }
}

impl Validate for DetectSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        for (i, dir) in self.rules_dirs.iter().enumerate() {
            if !dir.is_dir() {
                return Err(SettingsError::invalid(
                    format!("detect.rules_dirs[{i}]"),
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        if let Some(path) = &self.exceptions {
            crate::Exceptions::load(path)
                .map_err(|e| SettingsError::invalid("detect.exceptions", e.to_string()))?;
        }
        if let Some(path) = &self.model.path
            && !path.is_file()
        {
            return Err(SettingsError::invalid(
                "detect.model.path",
                format!("{} is not a file", path.display()),
            ));
        }
        if self.model.max_batch_graphs == 0 || self.model.max_batch_nodes == 0 {
            return Err(SettingsError::invalid(
                "detect.model",
                "max_batch_graphs and max_batch_nodes must be at least 1",
            ));
        }
        Ok(())
    }
}
