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
    /// Upper bound on raw events held in open windows; the oldest windows close early beyond it.
    pub max_buffered_events: usize,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        EnrichSettings {
            window_ms: 2_000,
            allowed_lateness_ms: 1_000,
            idle_flush_ms: 1_000,
            max_buffered_events: 200_000,
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
        require_range(
            "enrich.max_buffered_events",
            self.max_buffered_events,
            100,
            100_000_000,
        )?;
        Ok(())
    }
}
