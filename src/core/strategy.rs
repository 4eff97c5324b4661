//! Choosing whom to ring. Each number keeps a pool of its *idle eligible*
//! targets (active, connected, available, no offer, no call, no wrap-up),
//! ordered so that every strategy's choice is the first match of an ordered
//! scan, O(log n) plus the few targets this call already tried:
//!
//! - `ring_in_order`: pool ordered by target position; the first untried.
//! - `round_robin`: same order; the first untried after the position last
//!   offered a call on this number, wrapping around.
//! - `longest_idle`: pool ordered by (idle since, position); the first
//!   untried. Ties go to the earlier configured position.
//! - `ring_all`: everyone in the pool who has not tried this call.
//!
//! A user is in a pool only while eligible, so a 100,000-agent number with
//! most agents busy costs nothing to route.

use super::settings::Strategy;
use super::time::Instant;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ops::Bound;

/// Position of a user in a number's target list.
pub(crate) type Pos = u32;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Pool {
    ByPosition(BTreeSet<Pos>),
    ByIdle(BTreeSet<(Instant, Pos)>),
}

impl Pool {
    pub(crate) fn for_strategy(s: Strategy) -> Pool {
        match s {
            Strategy::LongestIdle => Pool::ByIdle(BTreeSet::new()),
            _ => Pool::ByPosition(BTreeSet::new()),
        }
    }

    pub(crate) fn insert(&mut self, pos: Pos, idle_since: Instant) {
        match self {
            Pool::ByPosition(s) => s.insert(pos),
            Pool::ByIdle(s) => s.insert((idle_since, pos)),
        };
    }

    pub(crate) fn remove(&mut self, pos: Pos, idle_since: Instant) {
        match self {
            Pool::ByPosition(s) => s.remove(&pos),
            Pool::ByIdle(s) => s.remove(&(idle_since, pos)),
        };
    }

    pub(crate) fn contains(&self, pos: Pos, idle_since: Instant) -> bool {
        match self {
            Pool::ByPosition(s) => s.contains(&pos),
            Pool::ByIdle(s) => s.contains(&(idle_since, pos)),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Pool::ByPosition(s) => s.is_empty(),
            Pool::ByIdle(s) => s.is_empty(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Pool::ByPosition(s) => s.len(),
            Pool::ByIdle(s) => s.len(),
        }
    }

    /// Every pooled position, in pool order.
    pub(crate) fn positions(&self) -> Box<dyn Iterator<Item = Pos> + '_> {
        match self {
            Pool::ByPosition(s) => Box::new(s.iter().copied()),
            Pool::ByIdle(s) => Box::new(s.iter().map(|&(_, p)| p)),
        }
    }

    /// The single target to offer next under `strategy`, skipping positions
    /// for which `skip` is true (targets that already tried this call).
    /// `last` is the round-robin cursor. Not for `ring_all`.
    pub(crate) fn select(&self, strategy: Strategy, last: Option<Pos>, skip: impl Fn(Pos) -> bool) -> Option<Pos> {
        match (self, strategy) {
            (Pool::ByPosition(s), Strategy::RoundRobin) => {
                // After the cursor to the end, then from the start up to and
                // including the cursor (it goes last, after a full lap).
                let (tail, head) = match last {
                    Some(l) => ((Bound::Excluded(l), Bound::Unbounded), (Bound::Unbounded, Bound::Included(l))),
                    None => ((Bound::Unbounded, Bound::Unbounded), (Bound::Unbounded, Bound::Excluded(0))),
                };
                s.range(tail).chain(s.range(head)).copied().find(|&p| !skip(p))
            }
            (Pool::ByPosition(s), _) => s.iter().copied().find(|&p| !skip(p)),
            (Pool::ByIdle(s), _) => s.iter().map(|&(_, p)| p).find(|&p| !skip(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_pos(ps: &[Pos]) -> Pool {
        let mut p = Pool::for_strategy(Strategy::RoundRobin);
        for &x in ps {
            p.insert(x, Instant::EPOCH);
        }
        p
    }

    #[test]
    fn round_robin_wraps_after_the_cursor() {
        let p = by_pos(&[0, 2, 5]);
        assert_eq!(p.select(Strategy::RoundRobin, None, |_| false), Some(0));
        assert_eq!(p.select(Strategy::RoundRobin, Some(0), |_| false), Some(2));
        assert_eq!(p.select(Strategy::RoundRobin, Some(2), |_| false), Some(5));
        assert_eq!(p.select(Strategy::RoundRobin, Some(5), |_| false), Some(0));
        assert_eq!(p.select(Strategy::RoundRobin, Some(3), |_| false), Some(5));
        // The cursor itself comes last, after a full lap.
        assert_eq!(p.select(Strategy::RoundRobin, Some(2), |x| x != 2), Some(2));
        assert_eq!(p.select(Strategy::RoundRobin, Some(2), |_| true), None);
    }

    #[test]
    fn in_order_takes_the_first_untried() {
        let p = by_pos(&[1, 3, 4]);
        assert_eq!(p.select(Strategy::RingInOrder, Some(3), |_| false), Some(1));
        assert_eq!(p.select(Strategy::RingInOrder, None, |x| x == 1), Some(3));
    }

    #[test]
    fn longest_idle_orders_by_time_then_position() {
        let mut p = Pool::for_strategy(Strategy::LongestIdle);
        p.insert(4, Instant::from_millis(10));
        p.insert(1, Instant::from_millis(20));
        p.insert(2, Instant::from_millis(10));
        assert_eq!(p.select(Strategy::LongestIdle, None, |_| false), Some(2));
        assert_eq!(p.select(Strategy::LongestIdle, None, |x| x == 2), Some(4));
        p.remove(2, Instant::from_millis(10));
        assert!(!p.contains(2, Instant::from_millis(10)));
        assert_eq!(p.len(), 2);
    }
}
