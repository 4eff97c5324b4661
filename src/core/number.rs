//! One of our numbers: its configuration (who is assigned, who may use it as
//! caller id, who is rung and how) and its live routing state (the queue,
//! the idle pool, the round-robin cursor, handle-time samples).

use super::ewt::HandleTimes;
use super::ids::{ConnId, NumberId};
use super::queue::QKey;
use super::settings::{QueueSettings, RoutingSettings};
use super::strategy::{Pool, Pos};
use super::time::Instant;
use super::timers::TimerKey;
use super::{Seq, UserIx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Number {
    pub(crate) id: NumberId,
    pub(crate) name: String,
    /// Assigned users, in order: they see the number's history and inbox and
    /// are its default routing targets.
    pub(crate) assigned: Vec<UserIx>,
    /// Outbound-only users: may call and text from the number, see nothing.
    pub(crate) caller_id: Vec<UserIx>,
    pub(crate) routing: RoutingSettings,
    pub(crate) queue_cfg: QueueSettings,
    /// Resolved routing targets (configured, or the assigned users).
    pub(crate) targets: Vec<UserIx>,

    /// Every entry holding a place (waiting, ringing, or a callback between
    /// attempts), in service order: priority, then arrival.
    pub(crate) queue: BTreeSet<QKey>,
    /// Entries an agent may be offered now: waiting with no offer out, or
    /// any waiting entry of a `ring_all` number (newly free agents join the
    /// ring).
    pub(crate) ready: BTreeSet<QKey>,
    /// Waiting callers (not callbacks) by arrival, for the longest wait.
    pub(crate) callers: BTreeSet<Seq>,
    pub(crate) pool: Pool,
    /// Round-robin cursor: the position last offered a call.
    pub(crate) rr_last: Option<Pos>,
    /// Targets logged in and not away.
    pub(crate) staffed: u32,
    pub(crate) handle_times: HandleTimes,
    pub(crate) announce_timer: Option<TimerKey>,
    pub(crate) last_sweep: Option<Instant>,
    /// Connections subscribed to `queue.stats` for this number.
    pub(crate) stats_subs: BTreeSet<ConnId>,
    pub(crate) stats_dirty: bool,
}

impl Number {
    pub(crate) fn new(id: NumberId, name: String, routing: RoutingSettings, queue_cfg: QueueSettings) -> Self {
        Number {
            id,
            name,
            assigned: Vec::new(),
            caller_id: Vec::new(),
            pool: Pool::for_strategy(routing.strategy),
            routing,
            queue_cfg,
            targets: Vec::new(),
            queue: BTreeSet::new(),
            ready: BTreeSet::new(),
            callers: BTreeSet::new(),
            rr_last: None,
            staffed: 0,
            handle_times: HandleTimes::default(),
            announce_timer: None,
            last_sweep: None,
            stats_subs: BTreeSet::new(),
            stats_dirty: false,
        }
    }
}
