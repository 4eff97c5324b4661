//! Everything one account holds. An account is a closed world: no method
//! here can reach another account, which is what keeps tenants isolated.
//!
//! The routing logic is spread over sibling modules as `impl Account` blocks
//! (`dispatch.rs`, `offer.rs`, `queue.rs`, ...); this file has the state and
//! the small helpers they share.

use super::call::LiveCall;
use super::history::Record;
use super::ids::{AccountId, CallId, CallbackId, ConnId, NumberId, OfferId, UserId};
use super::offer::Offer;
use super::output::{DirectoryChange, Output, RouteKey};
use super::queue::{Entry, QKey};
use super::recent::Recent;
use super::team::{Lifecycle, Plan, Role};
use super::time::{Instant, Timestamp};
use super::timers::{Timer, TimerKey, Timers};
use super::user::{Activity, User, Wants};
use super::{NumberIx, Seq, UserIx, number::Number};
use crate::protocol::agent::AgentMessage;
use crate::protocol::gateway::GatewayCommand;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// First character of every engine-issued id.
pub const ENGINE_ID_PREFIX: char = '~';

#[derive(Clone, Copy, Debug)]
pub(crate) enum IdKind {
    Call,
    Callback,
    Message,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) seq: u64,
    pub(crate) offer: u64,
    pub(crate) callback: u64,
    pub(crate) call: u64,
    pub(crate) message: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Account {
    pub(crate) id: AccountId,
    pub(crate) plan: Plan,
    pub(crate) users: Vec<User>,
    pub(crate) user_ix: FxHashMap<UserId, UserIx>,
    pub(crate) numbers: Vec<Number>,
    pub(crate) number_ix: FxHashMap<NumberId, NumberIx>,
    /// Queued work (inbound calls and callbacks) from arrival until an agent
    /// is connected, by arrival order.
    pub(crate) entries: BTreeMap<Seq, Entry>,
    pub(crate) entry_by_call: FxHashMap<CallId, Seq>,
    pub(crate) entry_by_callback: FxHashMap<CallbackId, Seq>,
    /// Calls with an agent on them (answered inbound, outbound, callbacks).
    pub(crate) calls: FxHashMap<CallId, LiveCall>,
    pub(crate) offers: FxHashMap<OfferId, Offer>,
    pub(crate) conn_user: FxHashMap<ConnId, UserIx>,
    /// `queue.stats` subscriptions: connection -> numbers.
    pub(crate) subs: BTreeMap<ConnId, Vec<NumberIx>>,
    pub(crate) subscribed_numbers: BTreeMap<NumberIx, u32>,
    pub(crate) stats_timer: Option<TimerKey>,
    pub(crate) last_stats_flush: Option<Instant>,
    pub(crate) recent: Recent,
    pub(crate) timers: Timers,
    pub(crate) counters: Counters,
    pub(crate) admin: super::admin::AccountAdmin,
    /// Derived, kept in step by `add_user`, `set_user_role` and
    /// `set_user_lifecycle` so that no per-user change scans every user:
    /// users in `active`, users still `invited`, and the owner.
    pub(crate) active_users: u32,
    pub(crate) invited_users: BTreeSet<UserIx>,
    pub(crate) owner_ix: Option<UserIx>,
    pub(crate) now: Instant,

    // Scratch for one input; empty between inputs.
    /// Users who just became eligible; they pick work before waiting
    /// entries are re-routed, so the oldest call goes first.
    #[serde(skip)]
    pub(crate) freed: VecDeque<UserIx>,
    /// Freed users who had turned down every ready entry: they start a new
    /// cycle only once every other freed user has taken its oldest entry,
    /// because the new cycle may ring those users too.
    #[serde(skip)]
    pub(crate) turned_all: VecDeque<UserIx>,
    /// Entries that need a routing decision, in service order.
    #[serde(skip)]
    pub(crate) dirty: BTreeSet<QKey>,
    #[serde(skip)]
    pub(crate) out: Vec<Output>,
}

impl Account {
    pub(crate) fn new(id: AccountId, plan: Plan, now: Instant) -> Self {
        Account {
            id,
            plan,
            users: Vec::new(),
            user_ix: FxHashMap::default(),
            numbers: Vec::new(),
            number_ix: FxHashMap::default(),
            entries: BTreeMap::new(),
            entry_by_call: FxHashMap::default(),
            entry_by_callback: FxHashMap::default(),
            calls: FxHashMap::default(),
            offers: FxHashMap::default(),
            conn_user: FxHashMap::default(),
            subs: BTreeMap::new(),
            subscribed_numbers: BTreeMap::new(),
            stats_timer: None,
            last_stats_flush: None,
            recent: Recent::default(),
            timers: Timers::default(),
            counters: Counters::default(),
            admin: Default::default(),
            active_users: 0,
            invited_users: BTreeSet::new(),
            owner_ix: None,
            now,
            freed: VecDeque::new(),
            turned_all: VecDeque::new(),
            dirty: BTreeSet::new(),
            out: Vec::new(),
        }
    }

    // ---- lookups -------------------------------------------------------

    pub(crate) fn user_named(&self, id: &UserId) -> Option<UserIx> {
        self.user_ix.get(id).copied()
    }

    pub(crate) fn number_named(&self, id: &NumberId) -> Option<NumberIx> {
        self.number_ix.get(id).copied()
    }

    pub(crate) fn user(&self, u: UserIx) -> &User {
        &self.users[u.0 as usize]
    }

    pub(crate) fn user_mut(&mut self, u: UserIx) -> &mut User {
        &mut self.users[u.0 as usize]
    }

    pub(crate) fn number(&self, n: NumberIx) -> &Number {
        &self.numbers[n.0 as usize]
    }

    pub(crate) fn number_mut(&mut self, n: NumberIx) -> &mut Number {
        &mut self.numbers[n.0 as usize]
    }

    pub(crate) fn is_assigned(&self, u: UserIx, n: NumberIx) -> bool {
        self.user(u).assigned.contains(&n)
    }

    /// May place calls and send SMS from the number.
    pub(crate) fn may_use(&self, u: UserIx, n: NumberIx) -> bool {
        let user = self.user(u);
        user.assigned.contains(&n) || user.caller_id.contains(&n)
    }

    /// The target position of `u` in number `n`, if `n` rings `u`.
    pub(crate) fn position_in(&self, u: UserIx, n: NumberIx) -> Option<u32> {
        self.user(u).serves.iter().find(|(m, _)| *m == n).map(|&(_, p)| p)
    }

    pub(crate) fn next_seq(&mut self) -> Seq {
        self.counters.seq += 1;
        Seq(self.counters.seq)
    }

    /// Engine-issued ids: `~<account>.<kind><n>`, one counter per kind.
    /// They carry the account so they are unique across shards, and the
    /// leading `~` is reserved (refused in gateway-issued ids), so they can
    /// never collide with a gateway's own call or message ids.
    pub(crate) fn issue_id(&mut self, kind: IdKind) -> String {
        let (tag, n) = match kind {
            IdKind::Call => {
                self.counters.call += 1;
                ("call", self.counters.call)
            }
            IdKind::Callback => {
                self.counters.callback += 1;
                ("cb", self.counters.callback)
            }
            IdKind::Message => {
                self.counters.message += 1;
                ("msg", self.counters.message)
            }
        };
        // Built by hand rather than with `format!`: one is issued for
        // every inbound call, and the formatting machinery is a few dozen
        // cache lines of code that are cold at light load.
        let account = self.id.as_str();
        let mut id = String::with_capacity(1 + account.len() + 1 + tag.len() + 20);
        id.push(ENGINE_ID_PREFIX);
        id.push_str(account);
        id.push('.');
        id.push_str(tag);
        id.push_str(super::ids::decimal(n, &mut [0; 20]));
        id
    }

    pub(crate) fn new_call_id(&mut self) -> CallId {
        CallId::from(self.issue_id(IdKind::Call))
    }

    // ---- emitting ------------------------------------------------------

    pub(crate) fn send_gateway(&mut self, cmd: GatewayCommand) {
        self.out.push(Output::Gateway { account: self.id.clone(), cmd });
    }

    /// To every device of `u`; dropped when it has none.
    pub(crate) fn send_user(&mut self, u: UserIx, msg: AgentMessage) {
        let user = &self.users[u.0 as usize];
        if user.connected() {
            self.out.push(Output::User { account: self.id.clone(), user: user.id.clone(), msg });
        }
    }

    pub(crate) fn send_conn(&mut self, conn: ConnId, msg: AgentMessage) {
        self.out.push(Output::Conn { conn, msg });
    }

    pub(crate) fn record(&mut self, record: Record) {
        self.out.push(Output::Record { account: self.id.clone(), record: Box::new(record) });
    }

    pub(crate) fn bind(&mut self, key: RouteKey) {
        self.out.push(Output::Directory(DirectoryChange::Bind { account: self.id.clone(), key }));
    }

    pub(crate) fn arm(&mut self, at: Instant, t: Timer) -> TimerKey {
        self.timers.arm(at, t)
    }

    // ---- the team ----------------------------------------------------------

    /// Adds a user; the only way users are created.
    pub(crate) fn add_user(&mut self, user: User) -> UserIx {
        let u = UserIx(self.users.len() as u32);
        self.user_ix.insert(user.id.clone(), u);
        let (role, lifecycle) = (user.role, user.lifecycle);
        self.users.push(user);
        self.count_user(u, role, lifecycle, 1);
        u
    }

    pub(crate) fn set_user_role(&mut self, u: UserIx, role: Role) {
        let (old, lifecycle) = (self.user(u).role, self.user(u).lifecycle);
        self.count_user(u, old, lifecycle, -1);
        self.user_mut(u).role = role;
        self.count_user(u, role, lifecycle, 1);
        if old != role {
            // A demoted user's `queue.stats` narrow or end at once.
            self.refresh_subscriptions();
        }
    }

    /// Changes only the lifecycle field and the counts; callers re-derive
    /// presence (pools, connections) themselves.
    pub(crate) fn set_user_lifecycle(&mut self, u: UserIx, lifecycle: Lifecycle) {
        let (role, old) = (self.user(u).role, self.user(u).lifecycle);
        self.count_user(u, role, old, -1);
        self.user_mut(u).lifecycle = lifecycle;
        self.count_user(u, role, lifecycle, 1);
    }

    fn count_user(&mut self, u: UserIx, role: Role, lifecycle: Lifecycle, sign: i32) {
        match lifecycle {
            Lifecycle::Active => self.active_users = self.active_users.saturating_add_signed(sign),
            Lifecycle::Invited if sign > 0 => {
                self.invited_users.insert(u);
            }
            Lifecycle::Invited => {
                self.invited_users.remove(&u);
            }
            Lifecycle::Deactivated | Lifecycle::Removed => {}
        }
        if role == Role::Owner && lifecycle != Lifecycle::Removed {
            if sign > 0 {
                self.owner_ix = Some(u);
            } else if self.owner_ix == Some(u) {
                self.owner_ix = None;
            }
        }
    }

    // ---- presence ------------------------------------------------------

    /// Sets what the user is doing, keeping pools, staffing and clients in
    /// step. All activity changes go through here.
    pub(crate) fn set_activity(&mut self, u: UserIx, a: Activity) {
        self.change_user(u, |user, _| user.activity = a);
    }

    pub(crate) fn set_wants(&mut self, u: UserIx, w: Wants) {
        self.change_user(u, |user, now| {
            let was_away = matches!(user.wants, Wants::Away(_));
            if was_away && w == Wants::Available {
                // Becoming available starts an idle period (longest_idle).
                if user.activity == Activity::Idle {
                    user.idle_since = now;
                }
                user.missed_in_row = 0;
            }
            user.wants = w;
        });
    }

    /// Applies `f` to the user, then re-derives pool membership, staffing
    /// and the visible status, telling the user's devices if it changed.
    pub(crate) fn change_user(&mut self, u: UserIx, f: impl FnOnce(&mut User, Instant)) {
        let now = self.now;
        let user = &mut self.users[u.0 as usize];
        let before = status_of(user);
        // Leave the pools under the old key before anything moves.
        let was_in = user.in_pools;
        if was_in {
            let idle = user.idle_since;
            let serves = std::mem::take(&mut user.serves);
            for &(n, pos) in &serves {
                self.numbers[n.0 as usize].pool.remove(pos, idle);
            }
            self.users[u.0 as usize].serves = serves;
        }
        let user = &mut self.users[u.0 as usize];
        f(user, now);
        let eligible = user.is_eligible();
        let staffed = user.is_staffed();
        let after = status_of(user);
        user.in_pools = eligible;
        let staffed_delta: i64 = match (user.counted_staffed, staffed) {
            (false, true) => 1,
            (true, false) => -1,
            _ => 0,
        };
        user.counted_staffed = staffed;
        let idle = user.idle_since;
        let serves = std::mem::take(&mut user.serves);
        for &(n, pos) in &serves {
            let number = &mut self.numbers[n.0 as usize];
            if eligible {
                number.pool.insert(pos, idle);
            }
            number.staffed = (i64::from(number.staffed) + staffed_delta).max(0) as u32;
        }
        self.users[u.0 as usize].serves = serves;
        if eligible && !was_in {
            self.freed.push_back(u);
        }
        if before != after {
            let (status, reason, until) = after;
            self.send_user(u, AgentMessage::Status { status, reason, until: until.map(Timestamp) });
            self.mark_stats_for_user(u);
        }
    }
}

type StatusView = (crate::protocol::agent::Status, Option<String>, Option<Instant>);

fn status_of(user: &User) -> StatusView {
    let (s, r, t) = user.status();
    (s, r.map(str::to_owned), t)
}

#[cfg(test)]
mod tests {
    use super::{Account, IdKind};
    use crate::core::ids::AccountId;
    use crate::core::team::Plan;
    use crate::core::time::Instant;

    #[test]
    fn issued_ids_name_the_account_and_count_per_kind() {
        let mut a = Account::new(AccountId::from("acme"), Plan::Team, Instant::EPOCH);
        let ids: Vec<String> =
            [IdKind::Call, IdKind::Call, IdKind::Callback, IdKind::Message].map(|k| a.issue_id(k)).into();
        assert_eq!(ids, ["~acme.call1", "~acme.call2", "~acme.cb1", "~acme.msg1"]);
    }
}
