//! Event-time order across partitions, for `clock = "findings"`.
//!
//! Findings of one partition arrive in their own order, but partitions are read side by side,
//! so one may run ahead of another. Timers driven by the findings' own times are only right if
//! findings are handled in time order. Each partition's findings queue up (in offset order,
//! never reordered within a partition, so stored offsets stay safe); the head with the lowest
//! time is released once every partition has been seen at or past it (the low watermark). A
//! partition with nothing new for `idle` stops holding the others back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

struct Lane<T> {
    queue: VecDeque<(i64, T)>,
    latest: Option<i64>,
    heard: Instant,
}

/// Items from several partitions, released in event-time order.
pub struct EventTimeMerge<T> {
    lanes: BTreeMap<i32, Lane<T>>,
    idle: Duration,
}

impl<T> EventTimeMerge<T> {
    /// An empty merge; a quiet partition stops holding others back after `idle`.
    pub fn new(idle: Duration) -> Self {
        EventTimeMerge {
            lanes: BTreeMap::new(),
            idle,
        }
    }

    /// Follows an assignment: new partitions start empty (and hold the others back until they
    /// are heard from or idle); items of partitions no longer owned are dropped, since their
    /// new owner reads them again from the last stored offset.
    pub fn assign(&mut self, partitions: &BTreeSet<i32>) {
        self.lanes.retain(|p, _| partitions.contains(p));
        for p in partitions {
            self.lanes.entry(*p).or_insert_with(|| Lane {
                queue: VecDeque::new(),
                latest: None,
                heard: Instant::now(),
            });
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lanes.values().map(|l| l.queue.len()).sum()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an item read from `partition` with event time `time`.
    pub fn push(&mut self, partition: i32, time: i64, item: T) {
        let lane = self.lanes.entry(partition).or_insert_with(|| Lane {
            queue: VecDeque::new(),
            latest: None,
            heard: Instant::now(),
        });
        lane.latest = Some(lane.latest.map_or(time, |l| l.max(time)));
        lane.heard = Instant::now();
        lane.queue.push_back((time, item));
    }

    /// The time every partition that still counts has reached.
    fn watermark(&self) -> Option<i64> {
        let mut low: Option<i64> = None;
        let mut any_counted = false;
        for lane in self.lanes.values() {
            let quiet = lane.queue.is_empty() && lane.heard.elapsed() >= self.idle;
            if quiet {
                continue;
            }
            any_counted = true;
            let t = lane.latest?;
            low = Some(low.map_or(t, |l| l.min(t)));
        }
        if any_counted { low } else { Some(i64::MAX) }
    }

    /// The next item in time order, if it is safe to release.
    pub fn pop_ready(&mut self) -> Option<(i32, T)> {
        let mark = self.watermark()?;
        let (partition, head) = self
            .lanes
            .iter()
            .filter_map(|(p, l)| l.queue.front().map(|(t, _)| (*p, *t)))
            .min_by_key(|(p, t)| (*t, *p))?;
        if head > mark {
            return None;
        }
        let lane = self.lanes.get_mut(&partition)?;
        lane.queue.pop_front().map(|(_, item)| (partition, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_time_order_once_every_partition_has_caught_up() {
        let mut m = EventTimeMerge::new(Duration::from_secs(3600));
        m.assign(&BTreeSet::from([0, 1]));
        m.push(0, 10, "a10");
        m.push(0, 30, "a30");
        assert!(m.pop_ready().is_none(), "partition 1 not heard from yet");
        m.push(1, 20, "b20");
        assert_eq!(m.pop_ready(), Some((0, "a10")));
        assert_eq!(m.pop_ready(), Some((1, "b20")));
        assert!(
            m.pop_ready().is_none(),
            "a30 waits: partition 1 is only at 20"
        );
        m.push(1, 40, "b40");
        assert_eq!(m.pop_ready(), Some((0, "a30")));
        assert!(m.pop_ready().is_none(), "b40 waits for partition 0");
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_quiet_partition_stops_holding_others_back() {
        let mut m = EventTimeMerge::new(Duration::from_millis(0));
        m.assign(&BTreeSet::from([0, 1]));
        m.push(0, 10, "a");
        assert_eq!(m.pop_ready(), Some((0, "a")));
        // Revoked partitions' items are dropped (their new owner re-reads them).
        m.push(1, 5, "b");
        m.assign(&BTreeSet::from([0]));
        assert!(m.is_empty());
    }
}
