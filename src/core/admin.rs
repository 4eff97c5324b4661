//! Team and number changes. They arrive as inputs like everything else, are
//! journaled like everything else, and take effect on the next routing
//! decision without dropping anyone who is waiting.

use super::account::Account;
use super::error::CoreError;
use super::ids::{NumberId, UserId, is_e164};
use super::number::Number;
use super::offer::OfferEnd;
use super::output::{CloseReason, DirectoryChange, Output};
use super::queue::Phase;
use super::settings::{QueueSettings, RoutingSettings, Strategy};
use super::strategy::Pool;
use super::team::{Lifecycle, Plan, Role};
use super::user::User;
use super::{NumberIx, Reply, UserIx};
use serde::{Deserialize, Serialize};

/// Who asked for a change.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Actor {
    /// Config-file provisioning at start-up.
    System,
    User(UserId),
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NumberSpec {
    pub name: String,
    pub assigned: Vec<UserId>,
    pub caller_id: Vec<UserId>,
    pub routing: RoutingSettings,
    pub queue: QueueSettings,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Create the account if missing, and set its plan.
    SetPlan {
        plan: Plan,
    },
    /// Create (active) or update a user. Lifecycle is kept on update.
    UpsertUser {
        user: UserId,
        email: String,
        role: Role,
        token_hash: Option<String>,
    },
    SetLifecycle {
        user: UserId,
        lifecycle: Lifecycle,
    },
    /// Create or replace a number's configuration.
    UpsertNumber {
        number: NumberId,
        spec: NumberSpec,
    },
}

/// Per-user admin bookkeeping (invites, billing) kept beside presence.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UserAdmin {}

/// Per-account admin bookkeeping.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct AccountAdmin {}

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_EMAIL_CHARS: usize = 254;

impl Account {
    pub(crate) fn admin(&mut self, actor: Actor, cmd: AdminCommand) -> Result<Reply, CoreError> {
        if let Actor::User(id) = &actor {
            let u = self.user_named(id).ok_or_else(|| CoreError::forbidden("unknown actor"))?;
            if !self.user(u).active() || !self.user(u).role.is_manager() {
                return Err(CoreError::forbidden("owners and admins only"));
            }
        }
        match cmd {
            AdminCommand::SetPlan { plan } => {
                self.plan = plan;
                Ok(Reply::Done)
            }
            AdminCommand::UpsertUser { user, email, role, token_hash } => {
                self.upsert_user(user, email, role, token_hash)
            }
            AdminCommand::SetLifecycle { user, lifecycle } => {
                let u = self.user_named(&user).ok_or_else(|| CoreError::not_found(format!("no user {user}")))?;
                self.set_lifecycle(u, lifecycle)
            }
            AdminCommand::UpsertNumber { number, spec } => self.upsert_number(number, spec),
        }
    }

    fn upsert_user(
        &mut self,
        id: UserId,
        email: String,
        role: Role,
        token_hash: Option<String>,
    ) -> Result<Reply, CoreError> {
        if id.as_str().is_empty() || id.as_str().len() > MAX_NAME_CHARS {
            return Err(CoreError::bad_request("user id must be 1 to 100 characters"));
        }
        if email.len() > MAX_EMAIL_CHARS {
            return Err(CoreError::bad_request("email is too long"));
        }
        if role == Role::Supervisor && !self.plan.has_supervisors() {
            return Err(CoreError::forbidden("the supervisor role needs the pro plan"));
        }
        let u = match self.user_named(&id) {
            Some(u) => {
                let user = self.user_mut(u);
                user.email = email;
                user.role = role;
                if token_hash.is_some() {
                    user.token_hash = token_hash;
                }
                u
            }
            None => {
                let u = UserIx(u32::try_from(self.users.len()).map_err(|_| CoreError::conflict("too many users"))?);
                let mut user = User::new(id.clone(), email, role, Lifecycle::Active, self.now);
                user.token_hash = token_hash;
                self.users.push(user);
                self.user_ix.insert(id, u);
                u
            }
        };
        self.publish_user(u);
        Ok(Reply::Done)
    }

    pub(crate) fn publish_user(&mut self, u: UserIx) {
        let user = self.user(u);
        let change = DirectoryChange::User {
            account: self.id.clone(),
            user: user.id.clone(),
            role: user.role,
            lifecycle: user.lifecycle,
            token_hash: user.token_hash.clone(),
        };
        self.out.push(Output::Directory(change));
    }

    pub(crate) fn set_lifecycle(&mut self, u: UserIx, lifecycle: Lifecycle) -> Result<Reply, CoreError> {
        if self.user(u).role == Role::Owner && lifecycle != Lifecycle::Active {
            return Err(CoreError::conflict("the owner cannot be deactivated or removed; transfer ownership first"));
        }
        if self.user(u).lifecycle == Lifecycle::Removed {
            return Err(CoreError::conflict("a removed user cannot come back; invite them again"));
        }
        if self.user(u).lifecycle == lifecycle {
            return Ok(Reply::Done);
        }
        if lifecycle != Lifecycle::Active {
            // Withdraw the pending offer first so its call moves on now.
            self.end_pending_offer(u, OfferEnd::Withdrawn);
            let reason = if lifecycle == Lifecycle::Removed { CloseReason::Removed } else { CloseReason::Deactivated };
            let conns = self.user(u).conns.clone();
            for conn in conns {
                self.conn_user.remove(&conn);
                self.unsubscribe(conn);
                self.out.push(Output::Close { conn, reason });
            }
        }
        self.change_user(u, |user, _| {
            user.lifecycle = lifecycle;
            if lifecycle != Lifecycle::Active {
                user.conns.clear();
            }
        });
        if lifecycle == Lifecycle::Removed {
            self.unassign_everywhere(u);
            self.user_mut(u).token_hash = None;
        }
        self.publish_user(u);
        Ok(Reply::Done)
    }

    /// A removed user leaves every number (assigned, caller id, targets);
    /// the numbers stay, and one left without targets still queues and
    /// overflows as configured.
    fn unassign_everywhere(&mut self, u: UserIx) {
        let id = self.user(u).id.clone();
        let mut touched: Vec<NumberIx> = self.user(u).assigned.clone();
        touched.extend(self.user(u).caller_id.iter().copied());
        touched.extend(self.user(u).serves.iter().map(|&(n, _)| n));
        touched.sort();
        touched.dedup();
        for n in touched {
            let number = self.number_mut(n);
            number.assigned.retain(|&x| x != u);
            number.caller_id.retain(|&x| x != u);
            if let Some(t) = &mut number.routing.targets {
                t.retain(|x| *x != id);
            }
            self.rebuild_number(n, &[u]);
        }
    }

    fn resolve_users(&self, ids: &[UserId], what: &str) -> Result<Vec<UserIx>, CoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let u = self.user_named(id).ok_or_else(|| CoreError::bad_request(format!("{what}: no user {id}")))?;
            if self.user(u).lifecycle == Lifecycle::Removed {
                return Err(CoreError::bad_request(format!("{what}: user {id} was removed")));
            }
            if !out.contains(&u) {
                out.push(u);
            }
        }
        Ok(out)
    }

    fn upsert_number(&mut self, id: NumberId, spec: NumberSpec) -> Result<Reply, CoreError> {
        if !is_e164(id.as_str()) {
            return Err(CoreError::bad_request(format!("number {id:?} is not E.164")));
        }
        if spec.name.trim().is_empty() || spec.name.chars().count() > MAX_NAME_CHARS {
            return Err(CoreError::bad_request("name must be 1 to 100 characters"));
        }
        spec.routing.validate().map_err(CoreError::bad_request)?;
        spec.queue.validate().map_err(CoreError::bad_request)?;
        let assigned = self.resolve_users(&spec.assigned, "assigned")?;
        let caller_id = self.resolve_users(&spec.caller_id, "caller_id")?;
        if let Some(t) = &spec.routing.targets {
            self.resolve_users(t, "routing.targets")?;
        }
        let n = match self.number_named(&id) {
            Some(n) => n,
            None => {
                let n =
                    NumberIx(u32::try_from(self.numbers.len()).map_err(|_| CoreError::conflict("too many numbers"))?);
                self.numbers.push(Number::new(id.clone(), spec.name.clone(), spec.routing.clone(), spec.queue.clone()));
                self.number_ix.insert(id.clone(), n);
                self.out.push(Output::Directory(DirectoryChange::Number {
                    account: self.id.clone(),
                    number: id,
                    present: true,
                }));
                n
            }
        };
        let number = self.number_mut(n);
        let mut stale = std::mem::take(&mut number.assigned);
        stale.append(&mut number.caller_id);
        number.name = spec.name;
        number.assigned = assigned;
        number.caller_id = caller_id;
        number.routing = spec.routing;
        number.queue_cfg = spec.queue;
        self.rebuild_number(n, &stale);
        Ok(Reply::Done)
    }

    /// Re-derives everything that follows from a number's configuration:
    /// targets, each user's view of the number, the idle pool, staffing and
    /// the ready set. Waiting entries keep their places and are routed again.
    /// `stale` lists users who were linked to the number before the change
    /// (old assigned and caller-id users); old targets are still on record.
    pub(crate) fn rebuild_number(&mut self, n: NumberIx, stale: &[UserIx]) {
        let number = self.number(n);
        let mut linked: Vec<UserIx> = stale.to_vec();
        linked.extend(number.assigned.iter().chain(&number.caller_id).chain(&number.targets).copied());
        linked.sort();
        linked.dedup();
        for u in linked {
            let user = self.user_mut(u);
            user.serves.retain(|&(m, _)| m != n);
            user.assigned.retain(|&m| m != n);
            user.caller_id.retain(|&m| m != n);
        }
        let number = self.number(n);
        let targets: Vec<UserIx> = match &number.routing.targets {
            Some(ids) => {
                let mut t = Vec::new();
                for id in ids {
                    if let Some(u) = self.user_named(id)
                        && self.user(u).lifecycle != Lifecycle::Removed
                        && !t.contains(&u)
                    {
                        t.push(u);
                    }
                }
                t
            }
            None => number.assigned.clone(),
        };
        let assigned = number.assigned.clone();
        let caller_id = number.caller_id.clone();
        let strategy = number.routing.strategy;
        for &u in &assigned {
            self.user_mut(u).assigned.push(n);
        }
        for &u in &caller_id {
            self.user_mut(u).caller_id.push(n);
        }
        let mut pool = Pool::for_strategy(strategy);
        let mut staffed = 0;
        for (pos, &u) in targets.iter().enumerate() {
            let pos = pos as u32;
            let user = self.user_mut(u);
            user.serves.push((n, pos));
            user.serves.sort();
            if user.in_pools {
                pool.insert(pos, user.idle_since);
            }
            if user.counted_staffed {
                staffed += 1;
            }
        }
        let len = targets.len() as u32;
        let ring_all = strategy == Strategy::RingAll;
        let queue: Vec<_> = self.number(n).queue.iter().copied().collect();
        let ready: std::collections::BTreeSet<_> = queue
            .iter()
            .copied()
            .filter(|k| {
                let e = &self.entries[&k.seq];
                e.phase == Phase::Queued && (ring_all || e.offers.is_empty())
            })
            .collect();
        for k in &ready {
            self.dirty.insert(*k);
        }
        let number = self.number_mut(n);
        number.targets = targets;
        number.pool = pool;
        number.staffed = staffed;
        number.ready = ready;
        if number.rr_last.is_some_and(|p| p >= len) {
            number.rr_last = None;
        }
        self.mark_stats(n);
    }
}
