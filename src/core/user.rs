//! A user and its presence. However many devices a user has connected, it
//! has exactly one engine-side state: what it *wants* (available or away) and
//! what it is *doing* (idle, ringing, on a call, wrapping up).

use super::NumberIx;
use super::ids::{CallId, ConnId, OfferId, UserId};
use super::team::{Lifecycle, Role};
use super::time::Instant;
use super::timers::TimerKey;
use crate::protocol::agent::{LostReason, Status};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum Wants {
    Available,
    Away(Option<String>),
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum Activity {
    Idle,
    /// Exactly one pending offer: a user is never offered two calls at once.
    Ringing(OfferId),
    /// Reserved for or talking on one call (inbound being bridged, talking,
    /// outbound, or a callback being dialled).
    OnCall(CallId),
    WrapUp {
        until: Instant,
        timer: TimerKey,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct User {
    pub(crate) id: UserId,
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) lifecycle: Lifecycle,
    /// Hex SHA-256 of the user's API token; the shell authenticates with it.
    pub(crate) token_hash: Option<String>,
    pub(crate) conns: Vec<ConnId>,
    pub(crate) wants: Wants,
    pub(crate) activity: Activity,
    /// End of the last call and wrap-up, or when the user became available.
    pub(crate) idle_since: Instant,
    pub(crate) missed_in_row: u32,
    /// (number, position in its targets) for every number that rings this user.
    pub(crate) serves: Vec<(NumberIx, u32)>,
    /// Numbers this user is assigned to or may use as caller id (derived).
    pub(crate) assigned: Vec<NumberIx>,
    pub(crate) caller_id: Vec<NumberIx>,
    /// Cached `is_eligible()`: true exactly while the user sits in the idle
    /// pools of the numbers it serves.
    pub(crate) in_pools: bool,
    /// Cached `is_staffed()`, counted in each served number's `staffed`.
    pub(crate) counted_staffed: bool,
    /// The last few offers that ended, so a late accept learns why it lost.
    pub(crate) ended_offers: VecDeque<(OfferId, LostReason)>,
    /// Extra state the admin layer keeps (invites, billing dates).
    pub(crate) admin: super::admin::UserAdmin,
}

impl User {
    pub(crate) fn new(id: UserId, email: String, role: Role, lifecycle: Lifecycle, now: Instant) -> Self {
        User {
            id,
            email,
            role,
            lifecycle,
            token_hash: None,
            conns: Vec::new(),
            wants: Wants::Available,
            activity: Activity::Idle,
            idle_since: now,
            missed_in_row: 0,
            serves: Vec::new(),
            assigned: Vec::new(),
            caller_id: Vec::new(),
            in_pools: false,
            counted_staffed: false,
            ended_offers: VecDeque::new(),
            admin: Default::default(),
        }
    }

    pub(crate) fn connected(&self) -> bool {
        !self.conns.is_empty()
    }

    pub(crate) fn active(&self) -> bool {
        self.lifecycle == Lifecycle::Active
    }

    /// May be offered a call right now.
    pub(crate) fn is_eligible(&self) -> bool {
        self.active() && self.connected() && self.wants == Wants::Available && self.activity == Activity::Idle
    }

    /// Counts towards the staffing of its numbers (for the wait estimate):
    /// logged in and not away, whatever it is doing.
    pub(crate) fn is_staffed(&self) -> bool {
        self.active() && self.connected() && self.wants == Wants::Available
    }

    /// The state clients see, with its reason and end time.
    pub(crate) fn status(&self) -> (Status, Option<&str>, Option<Instant>) {
        if !self.connected() {
            return (Status::Offline, None, None);
        }
        match &self.activity {
            Activity::Ringing(_) => (Status::Ringing, None, None),
            Activity::OnCall(_) => (Status::OnCall, None, None),
            Activity::WrapUp { until, .. } => (Status::WrapUp, None, Some(*until)),
            Activity::Idle => match &self.wants {
                Wants::Available => (Status::Available, None, None),
                Wants::Away(r) => (Status::Away, r.as_deref(), None),
            },
        }
    }

    pub(crate) fn remember_ended_offer(&mut self, id: OfferId, why: LostReason) {
        if self.ended_offers.len() == 4 {
            self.ended_offers.pop_front();
        }
        self.ended_offers.push_back((id, why));
    }
}
