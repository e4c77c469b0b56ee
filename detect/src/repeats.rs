//! Findings detect has already published for a window, so that it publishes each one once.
//!
//! A window reaches detect more than once: as early panes while it is still open, then whole
//! at its watermark (see `enrich::windows`), and again after a replay. A later part often finds
//! what an earlier part found, under the same finding id (rule, subject, window). Detect keeps
//! the ids it published for its most recent windows and drops such repeats; what slips past it
//! (after a restart or a rebalance) notify still recognises by id.

use std::collections::{HashMap, HashSet, VecDeque};

use korvid_schemas::Finding;

/// Finding ids published per window, for the most recent `capacity` windows with findings.
pub struct PublishedFindings {
    by_window: HashMap<String, HashSet<String>>,
    /// Windows in the order they were first remembered; the oldest is forgotten first.
    order: VecDeque<String>,
    capacity: usize,
}

impl PublishedFindings {
    /// Remembers up to `capacity` windows (at least one).
    pub fn new(capacity: usize) -> Self {
        PublishedFindings {
            by_window: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Removes from `findings` those already published for their window; returns how many.
    pub fn drop_repeats(&self, findings: &mut Vec<Finding>) -> usize {
        let before = findings.len();
        findings.retain(|f| {
            !self
                .by_window
                .get(&f.window_id)
                .is_some_and(|ids| ids.contains(&f.id))
        });
        before - findings.len()
    }

    /// Records `findings` as published (call once Kafka has acknowledged them).
    pub fn remember(&mut self, findings: &[Finding]) {
        for f in findings {
            if !self.by_window.contains_key(&f.window_id) {
                if self.order.len() == self.capacity
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.by_window.remove(&oldest);
                }
                self.order.push_back(f.window_id.clone());
            }
            self.by_window
                .entry(f.window_id.clone())
                .or_default()
                .insert(f.id.clone());
        }
    }

    /// Windows remembered.
    #[cfg(test)]
    fn windows(&self) -> usize {
        self.by_window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use korvid_schemas::Severity;

    fn finding(window: &str, id: &str) -> Finding {
        let mut f = crate::model::fusion::tests::finding("Pod/default/p", Severity::High);
        f.window_id = window.into();
        f.id = id.into();
        f
    }

    #[test]
    fn a_later_part_of_a_window_publishes_only_what_is_new() {
        let mut seen = PublishedFindings::new(8);
        let mut first = vec![finding("w1", "a")];
        assert_eq!(seen.drop_repeats(&mut first), 0);
        seen.remember(&first);
        // The whole window finds `a` again and `b`, which spans two panes.
        let mut whole = vec![finding("w1", "a"), finding("w1", "b")];
        assert_eq!(seen.drop_repeats(&mut whole), 1);
        assert_eq!(whole[0].id, "b");
        // The same finding id in another window is another finding.
        let mut other = vec![finding("w2", "a")];
        assert_eq!(seen.drop_repeats(&mut other), 0);
    }

    #[test]
    fn the_oldest_window_is_forgotten_first() {
        let mut seen = PublishedFindings::new(2);
        for w in ["w1", "w2", "w3"] {
            seen.remember(&[finding(w, "a")]);
        }
        assert_eq!(seen.windows(), 2);
        let mut again = vec![finding("w1", "a"), finding("w3", "a")];
        assert_eq!(seen.drop_repeats(&mut again), 1);
        assert_eq!(again[0].window_id, "w1", "w1 was forgotten");
    }
}
