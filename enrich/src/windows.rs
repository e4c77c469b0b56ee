//! Event-time tumbling windows with a watermark, allowed lateness, an idle flush, early panes,
//! a bound on buffered events, and the offset bookkeeping that makes emission at-least-once.
//!
//! A window that keeps receiving events (a busy namespace) would keep its first event waiting
//! its whole length plus the lateness. With `early_fire` set, such a window is also published
//! early, as a *pane* of only the events that arrived since its previous pane, at most that long
//! after the first of them arrived. The final publication at the watermark carries the whole
//! window, so what spans panes is still seen. Panes and the final window share the window's id,
//! so their findings share ids and are recognised as repeats downstream.
//!
//! Pure logic, no I/O: the service feeds events in and takes closed windows out. An offset is
//! committable only once every event at or below it has been emitted in a window (or rejected).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use korvid_schemas::AuditEvent;

/// A Kafka (topic, partition).
pub type TopicPartition = (String, i32);

/// Window parameters.
#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    /// Window length in milliseconds of event time.
    pub size_ms: i64,
    /// How long after the newest event a window stays open.
    pub lateness_ms: i64,
    /// Processing-time quiet period after which a key's windows close.
    pub idle_flush: Duration,
    /// Processing time after which an open window publishes what arrived since its last pane
    /// (`None`: only whole windows are published).
    pub early_fire: Option<Duration>,
    /// Bound on buffered events across all windows.
    pub max_buffered: usize,
}

/// What happened to an admitted event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Held in an open window.
    Buffered,
    /// Its window was already emitted; the caller dead-letters it.
    Late {
        /// End of the window it belonged to.
        window_end: i64,
        /// How far the key's windows had been emitted.
        emitted_until: i64,
    },
    /// Same auditID as an event already in the window (an API-server retry).
    Duplicate,
}

/// A window ready to be published.
#[derive(Debug)]
pub struct ClosedWindow {
    /// Partition key (cluster/namespace).
    pub key: String,
    /// Cluster id.
    pub cluster: String,
    /// Start, inclusive, ms.
    pub start: i64,
    /// End, exclusive, ms.
    pub end: i64,
    /// The events, deduplicated by auditID.
    pub events: Vec<AuditEvent>,
    /// The offsets these events came from.
    pub offsets: Vec<(TopicPartition, i64)>,
    /// Trace contexts (`traceparent`) of the events, first come first, at most
    /// [`korvid_common::trace_context::MAX_LINKS`] + 1.
    pub traces: Vec<String>,
    /// An early pane: the events since the window's previous pane, with no offsets (they are
    /// released by the window's final publication).
    pub early: bool,
}

struct OpenWindow {
    cluster: String,
    events: Vec<AuditEvent>,
    ids: BTreeSet<String>,
    offsets: Vec<(TopicPartition, i64)>,
    tp: TopicPartition,
    traces: Vec<String>,
    /// `events[..paned]` went out in early panes.
    paned: usize,
    /// Trace contexts of `events[paned..]`.
    pane_traces: Vec<String>,
    /// Arrival of `events[paned]`, the first event not in a pane yet.
    pane_since: Option<Instant>,
}

struct KeyState {
    max_event_ms: i64,
    emitted_until: i64,
    last_arrival: Instant,
}

#[derive(Default)]
struct OffsetState {
    pending: BTreeSet<i64>,
    max_seen: i64,
    stored: i64,
}

/// Assigns events to windows and decides when windows close.
pub struct WindowAssigner {
    cfg: WindowConfig,
    open: BTreeMap<(String, i64), OpenWindow>,
    keys: HashMap<String, KeyState>,
    offsets: HashMap<TopicPartition, OffsetState>,
    buffered: usize,
}

impl WindowAssigner {
    /// An empty assigner.
    pub fn new(cfg: WindowConfig) -> Self {
        WindowAssigner {
            cfg,
            open: BTreeMap::new(),
            keys: HashMap::new(),
            offsets: HashMap::new(),
            buffered: 0,
        }
    }

    /// Events currently held.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Windows currently open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    fn seen(&mut self, tp: &TopicPartition, offset: i64) -> &mut OffsetState {
        let st = self
            .offsets
            .entry(tp.clone())
            .or_insert_with(|| OffsetState {
                pending: BTreeSet::new(),
                max_seen: offset - 1,
                stored: offset - 1,
            });
        st.max_seen = st.max_seen.max(offset);
        st
    }

    /// Records a message that needs no window (rejected, tombstone): done once seen.
    pub fn mark_done(&mut self, tp: &TopicPartition, offset: i64) {
        self.seen(tp, offset);
    }

    /// Offers an event read from `tp` at `offset`, with the trace context it came with.
    pub fn admit(
        &mut self,
        key: &str,
        event: AuditEvent,
        tp: &TopicPartition,
        offset: i64,
        now: Instant,
        trace: Option<&str>,
    ) -> Admission {
        let event_ms = event.event_time.div_euclid(1000);
        let start = event_ms.div_euclid(self.cfg.size_ms) * self.cfg.size_ms;
        let end = start + self.cfg.size_ms;
        let ks = self.keys.entry(key.to_string()).or_insert(KeyState {
            max_event_ms: i64::MIN,
            emitted_until: i64::MIN,
            last_arrival: now,
        });
        if end <= ks.emitted_until {
            let emitted_until = ks.emitted_until;
            self.seen(tp, offset);
            return Admission::Late {
                window_end: end,
                emitted_until,
            };
        }
        ks.max_event_ms = ks.max_event_ms.max(event_ms);
        ks.last_arrival = now;
        let window = self
            .open
            .entry((key.to_string(), start))
            .or_insert_with(|| OpenWindow {
                cluster: event.cluster.clone(),
                events: Vec::new(),
                ids: BTreeSet::new(),
                offsets: Vec::new(),
                tp: tp.clone(),
                traces: Vec::new(),
                paned: 0,
                pane_traces: Vec::new(),
                pane_since: None,
            });
        if !window.ids.insert(event.audit_id.clone()) {
            self.seen(tp, offset);
            return Admission::Duplicate;
        }
        window.events.push(event);
        window.offsets.push((tp.clone(), offset));
        window.pane_since.get_or_insert(now);
        if let Some(t) = trace {
            for traces in [&mut window.traces, &mut window.pane_traces] {
                if traces.len() <= korvid_common::trace_context::MAX_LINKS {
                    traces.push(t.to_string());
                }
            }
        }
        self.buffered += 1;
        self.seen(tp, offset).pending.insert(offset);
        Admission::Buffered
    }

    /// Windows that close now (past the watermark, idle, or pushed out by the buffer bound),
    /// and the early panes of windows that stay open.
    ///
    /// Only the watermark makes a window final: an event for a window that was published early
    /// (idle, or for the buffer bound) opens it again, and it is published once more with what
    /// came since (same id, so replays stay idempotent). A sparse namespace whose window was
    /// flushed for idleness therefore loses no event that arrives within the allowed lateness.
    pub fn due(&mut self, now: Instant) -> Vec<ClosedWindow> {
        let mut out = self.closing(now);
        if let Some(early_fire) = self.cfg.early_fire {
            for ((key, start), w) in &mut self.open {
                if w.pane_since
                    .is_some_and(|t| now.duration_since(t) >= early_fire)
                {
                    out.push(ClosedWindow {
                        key: key.clone(),
                        cluster: w.cluster.clone(),
                        start: *start,
                        end: start + self.cfg.size_ms,
                        events: w.events[w.paned..].to_vec(),
                        offsets: Vec::new(),
                        traces: std::mem::take(&mut w.pane_traces),
                        early: true,
                    });
                    w.paned = w.events.len();
                    w.pane_since = None;
                }
            }
        }
        out
    }

    fn closing(&mut self, now: Instant) -> Vec<ClosedWindow> {
        let (size, lateness) = (self.cfg.size_ms, self.cfg.lateness_ms);
        for ks in self.keys.values_mut() {
            if ks.max_event_ms != i64::MIN {
                let watermark = ks.max_event_ms.saturating_sub(lateness);
                ks.emitted_until = ks
                    .emitted_until
                    .max(watermark.div_euclid(size).saturating_mul(size));
            }
        }
        let mut closing: Vec<(String, i64)> = self
            .open
            .keys()
            .filter(|(key, start)| {
                let ks = &self.keys[key];
                start + size <= ks.emitted_until
                    || now.duration_since(ks.last_arrival) >= self.cfg.idle_flush
            })
            .cloned()
            .collect();
        if self.buffered > self.cfg.max_buffered {
            // Oldest windows first, until under the bound.
            let mut by_age: Vec<(i64, String)> =
                self.open.keys().map(|(k, s)| (*s, k.clone())).collect();
            by_age.sort();
            let mut over = self.buffered - self.cfg.max_buffered;
            for (start, key) in by_age {
                if over == 0 {
                    break;
                }
                let n = self.open[&(key.clone(), start)].events.len();
                if !closing.contains(&(key.clone(), start)) {
                    closing.push((key, start));
                }
                over = over.saturating_sub(n);
            }
        }
        closing.into_iter().filter_map(|k| self.close(k)).collect()
    }

    /// Closes every open window (shutdown drain).
    pub fn flush_all(&mut self) -> Vec<ClosedWindow> {
        let all: Vec<_> = self.open.keys().cloned().collect();
        all.into_iter().filter_map(|k| self.close(k)).collect()
    }

    /// Removes a window and returns it whole, early panes included.
    fn close(&mut self, id: (String, i64)) -> Option<ClosedWindow> {
        let w = self.open.remove(&id)?;
        let (key, start) = id;
        let end = start + self.cfg.size_ms;
        self.buffered -= w.events.len();
        Some(ClosedWindow {
            key,
            cluster: w.cluster,
            start,
            end,
            events: w.events,
            offsets: w.offsets,
            traces: w.traces,
            early: false,
        })
    }

    /// Marks a closed window's offsets as published.
    pub fn published(&mut self, offsets: &[(TopicPartition, i64)]) {
        for (tp, off) in offsets {
            if let Some(st) = self.offsets.get_mut(tp) {
                st.pending.remove(off);
            }
        }
    }

    /// Offsets that may now be stored: per partition, the highest offset with nothing pending
    /// at or below it. Each is returned once.
    pub fn committable(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, st) in &mut self.offsets {
            let candidate = match st.pending.first() {
                Some(first) => first - 1,
                None => st.max_seen,
            };
            if candidate > st.stored {
                st.stored = candidate;
                out.push((tp.clone(), candidate));
            }
        }
        out
    }

    /// Forgets partitions this instance no longer owns: their open windows will be rebuilt
    /// by the new owner from the last committed offset.
    pub fn revoke(&mut self, lost: &[TopicPartition]) {
        if lost.is_empty() {
            return;
        }
        let dropped: Vec<_> = self
            .open
            .iter()
            .filter(|(_, w)| lost.contains(&w.tp))
            .map(|(k, _)| k.clone())
            .collect();
        for k in dropped {
            if let Some(w) = self.open.remove(&k) {
                self.buffered -= w.events.len();
            }
        }
        for tp in lost {
            self.offsets.remove(tp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, ms: i64) -> AuditEvent {
        AuditEvent {
            cluster: "c".into(),
            event_time: ms * 1000,
            audit_id: id.into(),
            stage: "ResponseComplete".into(),
            level: "Metadata".into(),
            verb: "get".into(),
            request_uri: "/".into(),
            user: "u".into(),
            groups: vec![],
            impersonated_user: None,
            source_ips: vec![],
            user_agent: None,
            api_group: None,
            api_version: None,
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            response_code: None,
            annotations: Default::default(),
            request_object: None,
        }
    }

    fn cfg() -> WindowConfig {
        WindowConfig {
            size_ms: 2000,
            lateness_ms: 500,
            idle_flush: Duration::from_secs(60),
            early_fire: None,
            max_buffered: 1000,
        }
    }

    fn tp() -> TopicPartition {
        ("audit".into(), 0)
    }

    #[test]
    fn watermark_closes_windows_and_offsets_follow() {
        let mut w = WindowAssigner::new(cfg());
        let now = Instant::now();
        assert_eq!(
            w.admit("k", ev("a", 100), &tp(), 10, now, None),
            Admission::Buffered
        );
        assert_eq!(
            w.admit("k", ev("b", 1900), &tp(), 11, now, None),
            Admission::Buffered
        );
        assert_eq!(
            w.admit("k", ev("b", 1900), &tp(), 12, now, None),
            Admission::Duplicate
        );
        assert!(w.due(now).is_empty(), "watermark 1400 < end 2000");
        assert!(w.committable().is_empty(), "nothing published yet");
        assert_eq!(
            w.admit("k", ev("c", 2600), &tp(), 13, now, None),
            Admission::Buffered
        );
        let closed = w.due(now);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start, closed[0].end), (0, 2000));
        assert_eq!(closed[0].events.len(), 2);
        w.published(&closed[0].offsets);
        // 10, 11 published, 12 was a duplicate, 13 still pending.
        assert_eq!(w.committable(), vec![(tp(), 12)]);
        assert_eq!(
            w.admit("k", ev("d", 1999), &tp(), 14, now, None),
            Admission::Late {
                window_end: 2000,
                emitted_until: 2000
            }
        );
        let rest = w.flush_all();
        w.published(&rest[0].offsets);
        assert_eq!(w.committable(), vec![(tp(), 14)]);
        assert_eq!(w.buffered(), 0);
    }

    #[test]
    fn idle_keys_flush_and_buffer_bound_holds() {
        let mut c = cfg();
        c.idle_flush = Duration::from_millis(10);
        c.max_buffered = 3;
        let mut w = WindowAssigner::new(c);
        let t0 = Instant::now();
        for i in 0..5 {
            w.admit("k", ev(&format!("e{i}"), i * 5000), &tp(), i, t0, None);
        }
        // Five windows of one event each; the bound closes the two oldest... and the watermark
        // the ones before the newest.
        let closed = w.due(t0);
        assert!(w.buffered() <= 3);
        assert!(closed.iter().all(|c| c.start < 20_000));
        let later = t0 + Duration::from_millis(20);
        let rest = w.due(later);
        assert_eq!(closed.len() + rest.len(), 5);
    }

    #[test]
    fn an_idle_flushed_window_reopens_until_the_watermark_passes_it() {
        let mut c = cfg();
        c.idle_flush = Duration::from_millis(10);
        let mut w = WindowAssigner::new(c);
        let t0 = Instant::now();
        w.admit("k", ev("a", 300), &tp(), 1, t0, None);
        let first = w.due(t0 + Duration::from_millis(20));
        assert_eq!(first.len(), 1, "idle: published early");
        // A second event of the same window, a second later: not late, the window reopens.
        assert_eq!(
            w.admit("k", ev("b", 1300), &tp(), 2, t0, None),
            Admission::Buffered
        );
        let again = w.due(t0 + Duration::from_millis(40));
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].start, again[0].end), (0, 2000));
        assert_eq!(again[0].events[0].audit_id, "b");
        // Once the watermark has passed the window it is final.
        w.admit("k", ev("c", 2600), &tp(), 3, t0, None);
        w.due(t0);
        assert!(matches!(
            w.admit("k", ev("d", 1900), &tp(), 4, t0, None),
            Admission::Late {
                window_end: 2000,
                ..
            }
        ));
    }

    #[test]
    fn a_busy_window_publishes_early_panes_then_the_whole_window() {
        let mut c = cfg();
        c.early_fire = Some(Duration::from_millis(100));
        let mut w = WindowAssigner::new(c);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        w.admit("k", ev("a", 100), &tp(), 1, at(0), None);
        w.admit("k", ev("b", 200), &tp(), 2, at(50), None);
        assert!(
            w.due(at(99)).is_empty(),
            "the pane's first event is 99 ms old"
        );
        let first = w.due(at(100));
        assert_eq!(first.len(), 1);
        assert!(first[0].early);
        assert_eq!((first[0].start, first[0].end), (0, 2000));
        let ids = |p: &ClosedWindow| {
            p.events
                .iter()
                .map(|e| e.audit_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&first[0]), ["a", "b"]);
        assert!(first[0].offsets.is_empty(), "a pane releases no offsets");
        w.published(&first[0].offsets);
        assert!(w.committable().is_empty());
        assert!(w.due(at(500)).is_empty(), "nothing new, no pane");
        // The next pane has only what came since.
        w.admit("k", ev("c", 900), &tp(), 3, at(600), None);
        let second = w.due(at(700));
        assert_eq!(second.len(), 1);
        assert_eq!(ids(&second[0]), ["c"]);
        // The watermark passes: the whole window, every offset, no pane of the closing window.
        w.admit("k", ev("d", 2600), &tp(), 4, at(710), None);
        let last = w.due(at(800));
        assert_eq!(last.len(), 1, "d's window is only 90 ms into its pane");
        assert!(!last[0].early);
        assert_eq!((last[0].start, last[0].end), (0, 2000));
        assert_eq!(ids(&last[0]), ["a", "b", "c"]);
        w.published(&last[0].offsets);
        assert_eq!(w.committable(), vec![(tp(), 3)]);
        let next = w.due(at(810));
        assert_eq!((next.len(), next[0].start, next[0].early), (1, 2000, true));
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let mut w = WindowAssigner::new(cfg());
        let now = Instant::now();
        w.admit("k", ev("a", 100), &tp(), 1, now, None);
        w.revoke(&[tp()]);
        assert_eq!(w.buffered(), 0);
        assert!(w.flush_all().is_empty());
        assert!(w.committable().is_empty());
    }
}
