//! `[enrich]` settings.

use korvid_common::settings::{SettingsError, Validate, require_range};
use serde::Deserialize;

/// `[enrich]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichSettings {
    /// Tumbling window length (event time).
    pub window_ms: i64,
    /// How far behind the newest event a window may still receive events.
    pub allowed_lateness_ms: i64,
    /// Close a partition's windows when it has been quiet this long (processing time).
    pub idle_flush_ms: u64,
    /// Publish what an open window gathered since its last early pane at most this long after
    /// the first of those events arrived (processing time; 0: only whole windows). A busy
    /// namespace then alerts in about this time instead of the window plus the lateness.
    pub early_fire_ms: u64,
    /// Upper bound on raw events held in open windows; the oldest windows close early beyond it.
    pub max_buffered_events: usize,
    /// Publish a window of each cluster's whole inventory this often (0: never), so rules see
    /// everything at least this often, not only what activity touched.
    pub full_window_ms: u64,
    /// Entities per window before it is split into several (`split_index` / `split_count`).
    pub max_window_nodes: usize,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        EnrichSettings {
            window_ms: 2_000,
            allowed_lateness_ms: 1_000,
            idle_flush_ms: 300,
            early_fire_ms: 500,
            max_buffered_events: 200_000,
            full_window_ms: 600_000,
            max_window_nodes: 20_000,
        }
    }
}

impl Validate for EnrichSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        require_range("enrich.window_ms", self.window_ms, 100, 3_600_000)?;
        require_range(
            "enrich.allowed_lateness_ms",
            self.allowed_lateness_ms,
            0,
            3_600_000,
        )?;
        require_range("enrich.idle_flush_ms", self.idle_flush_ms, 50, 3_600_000)?;
        if self.early_fire_ms != 0 {
            require_range("enrich.early_fire_ms", self.early_fire_ms, 50, 3_600_000)?;
        }
        require_range(
            "enrich.max_buffered_events",
            self.max_buffered_events,
            100,
            100_000_000,
        )?;
        if self.full_window_ms != 0 {
            require_range(
                "enrich.full_window_ms",
                self.full_window_ms,
                1_000,
                86_400_000,
            )?;
        }
        require_range(
            "enrich.max_window_nodes",
            self.max_window_nodes,
            100,
            10_000_000,
        )?;
        Ok(())
    }
}
