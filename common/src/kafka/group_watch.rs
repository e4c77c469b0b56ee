//! A guard against a group coordinator that leaves partitions without an owner.
//!
//! tansu 0.6, the embedded broker, can settle a consumer group as stable while some of its
//! partitions belong to no member, and it stays that way. Two cases are reproduced in the tests:
//! - A member is killed without leaving and a new one joins before the dead one's session has
//!   timed out, which is what an orchestrator restarting a crashed pod does. The newcomer is
//!   told that it owns nothing (`tests/fault_tolerance.rs`).
//! - A member dies and the survivors are left alone: the coordinator drops it at its session
//!   timeout but keeps the old assignment, so nobody takes its partitions over
//!   (`tests/scale_out.rs`).
//!
//! Every [`CHECK_EVERY`] a thread beside each consumer compares what it owns with its fair
//! share (off the consume loop: the broker may take seconds to answer under load). A consumer
//! that owns every partition of its topics is fine and asks the broker nothing beyond a
//! partition count a minute. The group's
//! members all run the same service and subscribe to the same topics, and librdkafka's
//! assignors (range, round-robin, cooperative-sticky) give each of `m` members at least
//! `floor(p / m)` of a topic's `p` partitions. When the group is stable and the consumer owns
//! less than that at [`STRIKES`] checks in a row, it leaves and subscribes again. The
//! coordinator then starts a new round with the live members only, and the leader hands every
//! partition out. (The broker's own view of who owns what would be the direct check, but tansu
//! describes every member's assignment as empty.)
//!
//! A Kafka that keeps the protocol never triggers a rejoin. What the check costs there, for a
//! consumer that shares its topics with other members, is one ListGroups and one
//! DescribeGroups request per interval.

use std::sync::Weak;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::{Consumer, StreamConsumer};

use super::RebalanceContext;

/// How often a consumer looks at its group.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Checks in a row that must find the consumer short before it rejoins: one could fall between
/// a rebalance's end and the assignment reaching this consumer.
const STRIKES: u8 = 2;
/// Deadline of each broker request the check makes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a topic's partition count is trusted.
const PARTITIONS_TTL: Duration = Duration::from_secs(60);

/// Checks `consumer`'s group every [`CHECK_EVERY`] on a thread of its own, until the
/// consumer is gone, and leaves and rejoins when the verdict says so (counted in `rejoins`).
pub(super) fn spawn(
    consumer: Weak<StreamConsumer<RebalanceContext>>,
    group: &str,
    topics: &[&str],
    rejoins: Counter,
) {
    let group = group.to_string();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let watch = move || {
        let mut strikes = Strikes::default();
        let mut partitions = Partitions::default();
        loop {
            std::thread::sleep(CHECK_EVERY);
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            let short = match shortfalls(&consumer, &group, &topics, &mut partitions) {
                Ok(short) => short,
                Err(e) => {
                    tracing::debug!(group, error = %e, "group check failed; trying again later");
                    continue;
                }
            };
            let Verdict::Rejoin(short) = strikes.verdict(short) else {
                continue;
            };
            for s in &short {
                tracing::warn!(
                    group,
                    topic = %s.topic,
                    owned = s.owned,
                    fair_share = s.fair,
                    "the group is stable but this member owns less than its share of the \
                     partitions (a broker-side coordinator fault); leaving and joining again"
                );
            }
            rejoins.inc();
            consumer.unsubscribe();
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            if let Err(e) = consumer.subscribe(&topics) {
                tracing::error!(group, error = %e, "subscribing again failed");
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("korvid-group-watch".into())
        .spawn(watch)
    {
        tracing::warn!(error = %e, "no group watch: starting its thread failed");
    }
}

/// How many checks in a row have found the consumer short.
#[derive(Default)]
struct Strikes(u8);

/// What a check decided.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do.
    Fine,
    /// Leave and join again: short of its share at [`STRIKES`] checks in a row.
    Rejoin(Vec<Shortfall>),
}

/// A topic of which a consumer owns less than its fair share.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shortfall {
    topic: String,
    owned: usize,
    fair: usize,
}

impl Strikes {
    fn verdict(&mut self, short: Vec<Shortfall>) -> Verdict {
        if short.is_empty() {
            self.0 = 0;
            return Verdict::Fine;
        }
        self.0 += 1;
        if self.0 < STRIKES {
            return Verdict::Fine;
        }
        self.0 = 0;
        Verdict::Rejoin(short)
    }
}

/// The partition count of each topic, asked of the broker again after [`PARTITIONS_TTL`].
#[derive(Default)]
struct Partitions {
    counts: Vec<usize>,
    asked: Option<Instant>,
}

/// The topics of which `consumer` owns less than its share, when its group is stable (none
/// otherwise: during a rebalance a member owns nothing for a moment).
///
/// A consumer that owns every partition is fine without asking the broker; only one that owns
/// fewer asks how many members the group has. (Under load tansu answers the group requests
/// slowly, and its answers hold up the fetches queued behind them on the same connection.)
fn shortfalls(
    consumer: &StreamConsumer<RebalanceContext>,
    group: &str,
    topics: &[String],
    partitions: &mut Partitions,
) -> Result<Vec<Shortfall>, rdkafka::error::KafkaError> {
    if partitions
        .asked
        .is_none_or(|t| t.elapsed() > PARTITIONS_TTL)
    {
        let mut counts = Vec::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
            counts.push(
                metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic)
                    .map(|t| t.partitions().len())
                    .sum(),
            );
        }
        *partitions = Partitions {
            counts,
            asked: Some(Instant::now()),
        };
    }
    let assignment = consumer.assignment()?;
    let counts: Vec<(String, usize, usize)> = topics
        .iter()
        .zip(&partitions.counts)
        .map(|(topic, &p)| {
            let owned = assignment
                .elements()
                .iter()
                .filter(|e| e.topic() == topic)
                .count();
            (topic.clone(), owned, p)
        })
        .collect();
    if counts.iter().all(|(_, owned, p)| owned >= p) {
        return Ok(Vec::new());
    }
    let groups = consumer.fetch_group_list(Some(group), REQUEST_TIMEOUT)?;
    let Some(info) = groups.groups().iter().find(|g| g.name() == group) else {
        return Ok(Vec::new());
    };
    if !info.state().eq_ignore_ascii_case("stable") {
        return Ok(Vec::new());
    }
    Ok(short_of_share(info.members().len(), counts))
}

/// Of `(topic, owned, partitions)`, those where a member of `members` owns fewer than
/// `floor(partitions / members)`.
fn short_of_share(members: usize, counts: Vec<(String, usize, usize)>) -> Vec<Shortfall> {
    if members == 0 {
        return Vec::new();
    }
    counts
        .into_iter()
        .map(|(topic, owned, partitions)| Shortfall {
            topic,
            owned,
            fair: partitions / members,
        })
        .filter(|s| s.owned < s.fair)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_short_when_it_owns_less_than_an_even_split() {
        let counts = |owned: usize| vec![("audit".to_string(), owned, 4)];
        // Alone with half the partitions: the dead member's half is unowned.
        assert_eq!(
            short_of_share(1, counts(2)),
            vec![Shortfall {
                topic: "audit".into(),
                owned: 2,
                fair: 4
            }]
        );
        // One of two with nothing.
        assert_eq!(short_of_share(2, counts(0)).len(), 1);
        // Even shares, and an uneven split's smaller share, are fine.
        assert!(short_of_share(2, counts(2)).is_empty());
        assert!(short_of_share(3, counts(1)).is_empty());
        // More members than partitions: owning nothing is a fair share.
        assert!(short_of_share(5, counts(0)).is_empty());
        // Not a member (yet): nothing to judge.
        assert!(short_of_share(0, counts(0)).is_empty());
    }

    #[test]
    fn rejoins_only_after_strikes_in_a_row() {
        let mut watch = Strikes::default();
        let lost = vec![Shortfall {
            topic: "t".into(),
            owned: 0,
            fair: 1,
        }];
        assert_eq!(watch.verdict(lost.clone()), Verdict::Fine);
        // A clean check in between starts the count again.
        assert_eq!(watch.verdict(Vec::new()), Verdict::Fine);
        assert_eq!(watch.verdict(lost.clone()), Verdict::Fine);
        assert_eq!(watch.verdict(lost.clone()), Verdict::Rejoin(lost.clone()));
        // And again after a rejoin.
        assert_eq!(watch.verdict(lost.clone()), Verdict::Fine);
    }
}
