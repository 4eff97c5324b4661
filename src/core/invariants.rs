//! Internal consistency checks and a read-only view of the state, used by
//! unit tests, the simulation and the benchmarks. Nothing here decides.

use super::account::Account;
use super::ids::{AccountId, NumberId, UserId};
use super::queue::{EntryKind, Phase};
use super::settings::Strategy;
use super::time::Instant;
use super::user::Activity;
use super::{Engine, UserIx};
use std::collections::BTreeSet;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl Account {
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        ensure!(
            self.freed.is_empty() && self.turned_all.is_empty() && self.dirty.is_empty(),
            "scratch queues not empty after settling"
        );
        // Offers point at a ringing user and a queued entry, and back.
        for (id, o) in &self.offers {
            ensure!(
                self.user(o.user).activity == Activity::Ringing(*id),
                "offer {id} but user {} is not ringing it",
                self.user(o.user).id
            );
            let e = self.entries.get(&o.entry).ok_or(format!("offer {id} for a missing entry"))?;
            ensure!(e.phase == Phase::Queued, "offer {id} for an entry that is not queued");
            ensure!(e.offers.contains(id), "entry does not list offer {id}");
        }
        // Each user is reserved by at most one thing, and what it is doing
        // exists.
        let mut reserved: BTreeSet<UserIx> = BTreeSet::new();
        for e in self.entries.values() {
            for o in &e.offers {
                ensure!(self.offers.get(o).is_some_and(|x| x.entry == e.seq), "entry lists a foreign offer {o}");
            }
            // Several offers for one entry happen under ring_all, and after
            // a switch away from it: calls already ringing keep ringing (a
            // change applies to the next decision).
            if let Phase::Connecting { agent, dial } = &e.phase {
                ensure!(e.offers.is_empty(), "connecting entry still has offers");
                ensure!(reserved.insert(*agent), "user {} connected to two calls", self.user(*agent).id);
                let expect = match (&e.kind, dial) {
                    (EntryKind::Call { call_id }, _) => call_id.clone(),
                    (EntryKind::Callback { .. }, Some(d)) => d.clone(),
                    (EntryKind::Callback { .. }, None) => {
                        return Err("callback connecting without a dial id".into());
                    }
                };
                ensure!(
                    self.user(*agent).activity == Activity::OnCall(expect.clone()),
                    "agent of {expect} is not on it"
                );
            }
        }
        for c in self.calls.values() {
            ensure!(reserved.insert(c.agent), "user {} on two calls", self.user(c.agent).id);
            ensure!(
                self.user(c.agent).activity == Activity::OnCall(c.id.clone()),
                "agent of call {} is not on it",
                c.id
            );
        }
        for (i, user) in self.users.iter().enumerate() {
            let u = UserIx(i as u32);
            match &user.activity {
                Activity::Ringing(id) => {
                    ensure!(
                        self.offers.get(id).is_some_and(|o| o.user == u),
                        "user {} ringing a missing offer",
                        user.id
                    )
                }
                Activity::OnCall(_) => ensure!(reserved.contains(&u), "user {} on a call nobody holds", user.id),
                _ => {}
            }
            ensure!(user.in_pools == user.is_eligible(), "user {} pool flag out of date", user.id);
            ensure!(user.counted_staffed == user.is_staffed(), "user {} staffing flag out of date", user.id);
            ensure!(
                user.conns.iter().all(|c| self.conn_user.get(c) == Some(&u)),
                "user {} connection map out of date",
                user.id
            );
        }
        // The team counts match the users.
        let active = self.users.iter().filter(|u| u.lifecycle == super::team::Lifecycle::Active).count() as u32;
        ensure!(active == self.active_users, "active users counted {} but {active}", self.active_users);
        let invited: BTreeSet<UserIx> = (0..self.users.len() as u32)
            .map(UserIx)
            .filter(|&u| self.user(u).lifecycle == super::team::Lifecycle::Invited)
            .collect();
        ensure!(invited == self.invited_users, "invited users out of date");
        let owner = (0..self.users.len() as u32).map(UserIx).find(|&u| {
            let user = self.user(u);
            user.role == super::team::Role::Owner && user.lifecycle != super::team::Lifecycle::Removed
        });
        ensure!(owner == self.owner_ix, "owner cached as {:?} but is {owner:?}", self.owner_ix);
        // Per number: derived sets match the entries and users.
        for (ni, number) in self.numbers.iter().enumerate() {
            let n = super::NumberIx(ni as u32);
            let ring_all = number.routing.strategy == Strategy::RingAll;
            let mut queue = BTreeSet::new();
            let mut ready = BTreeSet::new();
            let mut callers = BTreeSet::new();
            for e in self.entries.values().filter(|e| e.number == n) {
                match e.phase {
                    Phase::Queued | Phase::RetryWait { .. } => {
                        queue.insert(e.key());
                        if !e.is_callback() {
                            callers.insert(e.seq);
                        }
                    }
                    Phase::Connecting { .. } => {}
                }
                if e.phase == Phase::Queued && (ring_all || e.offers.is_empty()) {
                    ready.insert(e.key());
                }
            }
            ensure!(queue == number.queue, "number {} queue set out of date", number.id);
            ensure!(ready == number.ready, "number {} ready set out of date", number.id);
            ensure!(callers == number.callers, "number {} callers set out of date", number.id);
            let mut eligible = 0;
            let mut staffed = 0;
            for (pos, &u) in number.targets.iter().enumerate() {
                let user = self.user(u);
                ensure!(
                    user.serves.contains(&(n, pos as u32)),
                    "user {} does not know it serves {}",
                    user.id,
                    number.id
                );
                let pooled = number.pool.contains(pos as u32, user.idle_since);
                ensure!(
                    pooled == user.is_eligible(),
                    "user {} pooled={pooled} eligible={} on {}",
                    user.id,
                    user.is_eligible(),
                    number.id
                );
                eligible += usize::from(pooled);
                staffed += u32::from(user.is_staffed());
            }
            ensure!(eligible == number.pool.len(), "number {} pool has strangers", number.id);
            ensure!(staffed == number.staffed, "number {} staffed {} != {staffed}", number.id, number.staffed);
            // Work conservation: nobody eligible idles while a ready entry
            // waits with no offer out; under ring_all every idle target has
            // either been rung or turned this entry down.
            for key in &number.ready {
                let e = &self.entries[&key.seq];
                if e.offers.is_empty() {
                    ensure!(
                        number.pool.is_empty(),
                        "number {}: entry {:?} waits while {} targets idle",
                        number.id,
                        key.seq,
                        number.pool.len()
                    );
                } else {
                    for pos in number.pool.positions() {
                        let u = number.targets[pos as usize];
                        ensure!(e.tried.contains(&u), "ring_all entry {:?} skipped idle {}", key.seq, self.user(u).id);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sorts every map (by encoded key) so that equal states encode equally.
pub(crate) fn canonical(v: rmpv::Value) -> rmpv::Value {
    use rmpv::Value;
    match v {
        Value::Map(m) => {
            let mut m: Vec<(Value, Value)> = m.into_iter().map(|(k, v)| (canonical(k), canonical(v))).collect();
            m.sort_by_cached_key(|(k, _)| {
                let mut b = Vec::new();
                let _ = rmpv::encode::write_value(&mut b, k);
                b
            });
            Value::Map(m)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// A waiting entry as the view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedItem {
    /// Call id, or callback id.
    pub id: String,
    pub callback: bool,
    pub priority: u8,
    pub offered_to: Vec<UserId>,
    pub tried: Vec<UserId>,
    /// Offerable now (not between callback attempts).
    pub ready: bool,
}

/// Read-only access to engine state for tests and tools.
#[derive(Debug)]
pub struct View<'a> {
    pub(crate) engine: &'a Engine,
}

impl View<'_> {
    fn account(&self, a: &AccountId) -> Option<&Account> {
        self.engine.accounts.get(*self.engine.account_ix.get(a)?)
    }

    pub fn accounts(&self) -> Vec<AccountId> {
        self.engine.accounts.iter().map(|a| a.id.clone()).collect()
    }

    pub fn users(&self, a: &AccountId) -> Vec<UserId> {
        self.account(a).map(|acc| acc.users.iter().map(|u| u.id.clone()).collect()).unwrap_or_default()
    }

    pub fn numbers(&self, a: &AccountId) -> Vec<NumberId> {
        self.account(a).map(|acc| acc.numbers.iter().map(|n| n.id.clone()).collect()).unwrap_or_default()
    }

    pub fn is_eligible(&self, a: &AccountId, u: &UserId) -> bool {
        self.account(a).and_then(|acc| acc.user_named(u).map(|x| acc.user(x).is_eligible())).unwrap_or(false)
    }

    pub fn idle_since(&self, a: &AccountId, u: &UserId) -> Option<Instant> {
        let acc = self.account(a)?;
        Some(acc.user(acc.user_named(u)?).idle_since)
    }

    pub fn strategy(&self, a: &AccountId, n: &NumberId) -> Option<Strategy> {
        let acc = self.account(a)?;
        Some(acc.number(acc.number_named(n)?).routing.strategy)
    }

    pub fn targets(&self, a: &AccountId, n: &NumberId) -> Vec<UserId> {
        let Some(acc) = self.account(a) else {
            return Vec::new();
        };
        let Some(n) = acc.number_named(n) else {
            return Vec::new();
        };
        acc.number(n).targets.iter().map(|&u| acc.user(u).id.clone()).collect()
    }

    /// Numbers the user is assigned to now (history visibility).
    pub fn assigned_numbers(&self, a: &AccountId, u: &UserId) -> Vec<NumberId> {
        let Some(acc) = self.account(a) else { return Vec::new() };
        let Some(u) = acc.user_named(u) else { return Vec::new() };
        acc.user(u).assigned.iter().map(|&n| acc.number(n).id.clone()).collect()
    }

    /// Numbers that ring this user.
    pub fn serves(&self, a: &AccountId, u: &UserId) -> Vec<NumberId> {
        let Some(acc) = self.account(a) else {
            return Vec::new();
        };
        let Some(u) = acc.user_named(u) else {
            return Vec::new();
        };
        acc.user(u).serves.iter().map(|&(n, _)| acc.number(n).id.clone()).collect()
    }

    /// The number's queue in service order.
    pub fn queue(&self, a: &AccountId, n: &NumberId) -> Vec<QueuedItem> {
        let Some(acc) = self.account(a) else {
            return Vec::new();
        };
        let Some(n) = acc.number_named(n) else {
            return Vec::new();
        };
        let name = |u: &UserIx| acc.user(*u).id.clone();
        acc.number(n)
            .queue
            .iter()
            .map(|k| {
                let e = &acc.entries[&k.seq];
                QueuedItem {
                    id: match &e.kind {
                        EntryKind::Call { call_id } => call_id.to_string(),
                        EntryKind::Callback { callback_id, .. } => callback_id.to_string(),
                    },
                    callback: e.is_callback(),
                    priority: e.priority,
                    offered_to: e.offers.iter().filter_map(|o| acc.offers.get(o)).map(|o| name(&o.user)).collect(),
                    tried: e.tried.iter().map(name).collect(),
                    ready: e.phase == Phase::Queued,
                }
            })
            .collect()
    }

    /// The round-robin cursor: who was last offered a call on the number.
    pub fn last_offered(&self, a: &AccountId, n: &NumberId) -> Option<UserId> {
        let acc = self.account(a)?;
        let number = acc.number(acc.number_named(n)?);
        number.rr_last.map(|p| acc.user(number.targets[p as usize]).id.clone())
    }

    pub fn timer_count(&self) -> usize {
        self.engine.accounts.iter().map(|a| a.timers.len()).sum()
    }

    pub fn recent_count(&self) -> usize {
        self.engine.accounts.iter().map(|a| a.recent.len()).sum()
    }

    /// Entries still held (queued, between attempts, or connecting).
    pub fn entry_count(&self) -> usize {
        self.engine.accounts.iter().map(|a| a.entries.len()).sum()
    }

    pub fn live_call_count(&self) -> usize {
        self.engine.accounts.iter().map(|a| a.calls.len()).sum()
    }
}
