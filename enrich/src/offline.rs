//! enrich without Kafka: the same inventory, windowing and table code over records read from
//! files (ingest's snapshot import and audit log parsers), so `korvid scan` judges a snapshot
//! and its audit trail exactly as the pipeline would.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use korvid_schemas::{AuditEvent, GraphWindow, ImageScan, ObjectChange};

use crate::inventory::Inventory;
use crate::tables::{ActivityAggregator, TableError, full_windows, touched_ids};
use crate::windows::{Admission, WindowAssigner, WindowConfig};

/// What an offline run produced.
#[derive(Debug, Default)]
pub struct OfflineWindows {
    /// Windows of activity (with the inventory around it), then the full-inventory windows.
    pub windows: Vec<GraphWindow>,
    /// Events refused as late (older than an already-closed window of their key).
    pub late: usize,
    /// Events folded into an identical auditID.
    pub duplicates: usize,
}

/// Builds every window for one cluster's objects, scans and audit events. Events are windowed
/// in event-time order; then every cluster's whole inventory becomes full windows (split at
/// `max_nodes` entities).
pub async fn windows(
    objects: &[ObjectChange],
    scans: Vec<ImageScan>,
    mut events: Vec<AuditEvent>,
    window_ms: i64,
    max_nodes: usize,
) -> Result<OfflineWindows, TableError> {
    let mut inventories: std::collections::BTreeMap<String, Inventory> = Default::default();
    for o in objects {
        inventories.entry(o.cluster.clone()).or_default().apply(o);
    }
    for s in scans {
        inventories
            .entry(s.cluster.clone())
            .or_default()
            .apply_scan(s);
    }
    let graphs: std::collections::BTreeMap<String, crate::inventory::Graph> = inventories
        .iter()
        .map(|(c, inv)| (c.clone(), inv.graph()))
        .collect();

    events.sort_by(|a, b| (a.event_time, &a.audit_id).cmp(&(b.event_time, &b.audit_id)));
    let mut assigner = WindowAssigner::new(WindowConfig {
        size_ms: window_ms,
        // Files are read whole: nothing is late except what sorting cannot fix (none).
        lateness_ms: i64::MAX / 4,
        idle_flush: Duration::from_secs(3600),
        early_fire: None,
        max_buffered: usize::MAX,
    });
    let tp = ("offline".to_string(), 0);
    let now = Instant::now();
    let mut out = OfflineWindows::default();
    for (offset, e) in events.into_iter().enumerate() {
        let key = format!(
            "{}/{}",
            e.cluster,
            e.namespace.as_deref().unwrap_or("_cluster")
        );
        match assigner.admit(&key, e, &tp, offset as i64, now, None) {
            Admission::Buffered => {}
            Admission::Duplicate => out.duplicates += 1,
            Admission::Late { .. } => out.late += 1,
        }
    }
    let aggregator = ActivityAggregator::new().await?;
    let mut closed = assigner.flush_all();
    closed.sort_by(|a, b| (&a.key, a.start).cmp(&(&b.key, b.start)));
    for w in closed {
        let around = graphs.get(&w.cluster).map(|g| {
            let seeds: BTreeSet<String> = touched_ids(&w.events);
            g.neighbourhood(&seeds, 2)
        });
        out.windows.extend(
            aggregator
                .graph_windows(&w, around.as_ref(), max_nodes)
                .await?,
        );
    }
    let end = out.windows.iter().map(|w| w.window_end).max().unwrap_or(0);
    for (cluster, g) in &graphs {
        out.windows
            .extend(full_windows(cluster, g, 0, end, max_nodes)?);
    }
    Ok(out)
}
