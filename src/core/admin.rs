//! Team and number changes. They arrive as inputs like everything else, are
//! journaled like everything else, and take effect on the next routing
//! decision without dropping anyone who is waiting.
//!
//! Two kinds of actor send them. Config provisioning ([`Actor::System`])
//! runs at every start and uses the upsert commands; the HTTP admin API
//! ([`Actor::User`], and [`Actor::Invitee`] for accepting an invitation)
//! uses the others. Every command is checked against the permission matrix
//! ([`Role::may`]) and its own rules before anything changes: a refused
//! input leaves the state exactly as it was, so it need not be journaled.
//!
//! What the API changed wins over the file at later starts: the file never
//! makes a second owner nor demotes the owner (ownership moves only by
//! transfer), a role or plan set through the API is not reset by the file,
//! and a number created or edited through the API is no longer provisioned
//! from the file. Otherwise a restart would silently undo an admin's change.

use super::account::Account;
use super::error::CoreError;
use super::ids::{NumberId, UserId, is_e164};
use super::invite::{Invite, InviteSpec};
use super::number::Number;
use super::offer::OfferEnd;
use super::output::{CloseReason, DirectoryChange, Output};
use super::queue::Phase;
use super::settings::{Overflow, QueueSettings, RoutingSettings, Strategy};
use super::strategy::Pool;
use super::team::{Action, Lifecycle, Plan, Role};
use super::user::User;
use super::{NumberIx, Reply, UserIx};
use crate::config::Billing;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// Who asked for a change.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Actor {
    /// Config-file provisioning at start-up.
    System,
    User(UserId),
    /// Someone presenting an invitation token (not logged in). Only
    /// [`AdminCommand::AcceptInvite`] needs no more than that.
    Invitee,
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
    /// Create the account if missing (provisioning only), and set its plan.
    /// From a user: the owner changes the plan.
    SetPlan {
        plan: Plan,
    },
    /// Provisioning: create (active) or update a user. Lifecycle is kept on
    /// update.
    UpsertUser {
        user: UserId,
        email: String,
        role: Role,
        token_hash: Option<String>,
    },
    /// Deactivate, reactivate or remove a user.
    SetLifecycle {
        user: UserId,
        lifecycle: Lifecycle,
    },
    /// Provisioning: create or replace a number's configuration.
    UpsertNumber {
        number: NumberId,
        spec: NumberSpec,
    },
    /// Provisioning: the `[billing]` price table in force.
    SetPrices {
        prices: Billing,
    },
    /// Invite users: all of them or, if one row is refused, none.
    Invite {
        invites: Vec<InviteSpec>,
    },
    /// The invitee accepts; `token_hash` becomes its API token's hash.
    AcceptInvite {
        invite_hash: String,
        token_hash: String,
    },
    /// A new invitation token; the 7 days start again.
    ResendInvite {
        user: UserId,
        invite_hash: String,
    },
    SetRole {
        user: UserId,
        role: Role,
    },
    /// The owner hands the account to an active user, confirming with the
    /// hash of its own token (re-authentication). The old owner becomes an
    /// admin.
    TransferOwnership {
        to: UserId,
        confirm_hash: String,
    },
    /// A new number (refused if it exists).
    CreateNumber {
        number: NumberId,
        spec: Box<NumberSpec>,
    },
    /// Changes only the fields the patch carries. (Boxed: inputs are moved
    /// on the hot path, and a patch is by far the largest command.)
    UpdateNumber {
        number: NumberId,
        patch: Box<NumberPatch>,
    },
}

/// A partial number change: absent fields keep their value.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NumberPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Vec<UserId>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<Vec<UserId>>,
    pub routing: RoutingPatch,
    pub queue: QueuePatch,
}

/// Routing targets in a patch: `null` goes back to the assigned users.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TargetsPatch {
    Assigned,
    Users(Vec<UserId>),
}

impl Serialize for TargetsPatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetsPatch::Assigned => s.serialize_none(),
            TargetsPatch::Users(v) => s.serialize_some(v),
        }
    }
}

/// Present-and-null is [`TargetsPatch::Assigned`]; absent is no change
/// (the field's `default`).
fn targets_patch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TargetsPatch>, D::Error> {
    let v: Option<Vec<UserId>> = Option::deserialize(d)?;
    Ok(Some(v.map_or(TargetsPatch::Assigned, TargetsPatch::Users)))
}

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub ring_timeout: Option<Duration>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub wrap_up: Option<Duration>,
    #[serde(deserialize_with = "targets_patch", skip_serializing_if = "Option::is_none")]
    pub targets: Option<TargetsPatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_away_after_missed: Option<u32>,
}

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueuePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<u32>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce_position: Option<bool>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub announce_every: Option<Duration>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub announce_min_gap: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_attempts: Option<u32>,
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub callback_retry_after: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<Overflow>,
}

/// Optional durations written as strings (`"15s"`), like the settings.
mod opt_duration {
    use crate::core::time::duration_str;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&duration_str::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(d)?;
        s.map(|s| duration_str::parse(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

impl NumberPatch {
    /// Whether the patch changes nothing at all.
    pub fn is_empty(&self) -> bool {
        self == &NumberPatch::default()
    }

    fn apply(self, spec: &mut NumberSpec) {
        fn set<T>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        set(&mut spec.name, self.name);
        set(&mut spec.assigned, self.assigned);
        set(&mut spec.caller_id, self.caller_id);
        let (r, p) = (&mut spec.routing, self.routing);
        set(&mut r.strategy, p.strategy);
        set(&mut r.ring_timeout, p.ring_timeout);
        set(&mut r.wrap_up, p.wrap_up);
        set(&mut r.auto_away_after_missed, p.auto_away_after_missed);
        match p.targets {
            None => {}
            Some(TargetsPatch::Assigned) => r.targets = None,
            Some(TargetsPatch::Users(v)) => r.targets = Some(v),
        }
        let (q, p) = (&mut spec.queue, self.queue);
        set(&mut q.enabled, p.enabled);
        set(&mut q.max_waiting, p.max_waiting);
        set(&mut q.max_wait, p.max_wait);
        set(&mut q.announce_position, p.announce_position);
        set(&mut q.announce_every, p.announce_every);
        set(&mut q.announce_min_gap, p.announce_min_gap);
        set(&mut q.callback, p.callback);
        set(&mut q.callback_attempts, p.callback_attempts);
        set(&mut q.callback_retry_after, p.callback_retry_after);
        set(&mut q.overflow, p.overflow);
    }
}

/// Per-user admin bookkeeping kept beside presence.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct UserAdmin {
    /// The pending invitation of an `invited` user.
    pub(crate) invite: Option<Invite>,
}

/// Per-account admin bookkeeping: billing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct AccountAdmin {
    /// The price table in force (the config's `[billing]`).
    pub(crate) prices: Billing,
    /// The cycle being billed; `None` until the first accepted admin change.
    pub(crate) cycle: Option<super::billing::Cycle>,
    /// Seats paid for in the current cycle.
    pub(crate) paid_seats: u32,
    pub(crate) ledger: Vec<super::billing::LedgerEntry>,
}

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_EMAIL_CHARS: usize = 254;

/// An actor resolved against the account.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum By {
    System,
    Invitee,
    User(UserIx),
}

impl Account {
    pub(crate) fn admin(&mut self, actor: Actor, cmd: AdminCommand) -> Result<Reply, CoreError> {
        let by = self.resolve_actor(&actor)?;
        let r = self.admin_cmd(by, cmd)?;
        if r == Reply::Done {
            // Billing starts with the first accepted change, never with a
            // refused one (which is not journaled).
            self.ensure_cycle();
        }
        Ok(r)
    }

    /// The actor as a user of this account; a user who is not active (or
    /// of another account) may do nothing.
    pub(crate) fn resolve_actor(&self, actor: &Actor) -> Result<By, CoreError> {
        match actor {
            Actor::System => Ok(By::System),
            Actor::Invitee => Ok(By::Invitee),
            Actor::User(id) => {
                let u = self.user_named(id).ok_or_else(|| CoreError::forbidden("unknown actor"))?;
                let user = self.user(u);
                if !user.active() {
                    return Err(CoreError::forbidden(format!("user {id} is {}", user.lifecycle.as_str())));
                }
                Ok(By::User(u))
            }
        }
    }

    /// The permission matrix for `by`: provisioning may do anything, an
    /// invitee nothing but accept, a user what its role allows.
    pub(crate) fn authorize(&self, by: By, action: Action) -> Result<(), CoreError> {
        match by {
            By::System => Ok(()),
            By::Invitee => Err(CoreError::forbidden("an invitation only allows accepting it")),
            By::User(u) => {
                let role = self.user(u).role;
                if role.may(action, self.plan) {
                    Ok(())
                } else {
                    Err(CoreError::forbidden(format!("the {role} role may not {}", action.describe())))
                }
            }
        }
    }

    fn system_only(by: By) -> Result<(), CoreError> {
        match by {
            By::System => Ok(()),
            _ => Err(CoreError::forbidden("config provisioning only; use the admin API's own routes")),
        }
    }

    fn user_to_manage(&self, id: &UserId) -> Result<UserIx, CoreError> {
        self.user_named(id).ok_or_else(|| CoreError::not_found(format!("no user {id}")))
    }

    /// The account's owner (there is at most one; none before provisioning).
    pub(crate) fn owner(&self) -> Option<UserIx> {
        self.owner_ix
    }

    fn admin_cmd(&mut self, by: By, cmd: AdminCommand) -> Result<Reply, CoreError> {
        match cmd {
            AdminCommand::SetPlan { plan } => self.set_plan(by, plan),
            AdminCommand::UpsertUser { user, email, role, token_hash } => {
                Self::system_only(by)?;
                self.upsert_user(user, email, role, token_hash)
            }
            AdminCommand::SetLifecycle { user, lifecycle } => {
                self.authorize(by, Action::ManageTeam)?;
                let u = self.user_to_manage(&user)?;
                if let By::User(actor) = by {
                    self.check_lifecycle_change(actor, u, lifecycle)?;
                }
                self.set_lifecycle(u, lifecycle)
            }
            AdminCommand::UpsertNumber { number, mut spec } => {
                Self::system_only(by)?;
                self.leave_off_removed(&mut spec);
                self.upsert_number(number, spec)
            }
            AdminCommand::SetPrices { prices } => {
                Self::system_only(by)?;
                self.set_prices(prices)?;
                Ok(Reply::Done)
            }
            AdminCommand::Invite { invites } => {
                self.authorize(by, Action::ManageTeam)?;
                self.invite(invites)
            }
            AdminCommand::AcceptInvite { invite_hash, token_hash } => self.accept_invite(&invite_hash, token_hash),
            AdminCommand::ResendInvite { user, invite_hash } => {
                self.authorize(by, Action::ManageTeam)?;
                let u = self.user_to_manage(&user)?;
                self.resend_invite(u, invite_hash)
            }
            AdminCommand::SetRole { user, role } => {
                self.authorize(by, Action::ManageTeam)?;
                let u = self.user_to_manage(&user)?;
                self.set_role(by, u, role)
            }
            AdminCommand::TransferOwnership { to, confirm_hash } => {
                self.authorize(by, Action::TransferOwnership)?;
                self.transfer_ownership(by, &to, &confirm_hash)
            }
            AdminCommand::CreateNumber { number, spec } => {
                self.authorize(by, Action::ManageNumbers)?;
                self.create_number(number, spec)
            }
            AdminCommand::UpdateNumber { number, patch } => {
                self.authorize(by, Action::ManageNumbers)?;
                self.update_number(number, patch)
            }
        }
    }

    // ---- plan, roles, ownership -------------------------------------------

    fn set_plan(&mut self, by: By, plan: Plan) -> Result<Reply, CoreError> {
        match by {
            By::System => {
                // The file is the operator's word: a downgrade applies even
                // with supervisors (they keep the role but lose monitoring
                // and queue stats until the plan is pro again).
                let changed = plan != self.plan;
                self.plan = plan;
                if changed {
                    self.after_plan_change();
                }
                Ok(Reply::Done)
            }
            By::Invitee | By::User(_) => {
                self.authorize(by, Action::Billing)?;
                if plan == self.plan {
                    return Ok(Reply::ReadOnly);
                }
                if !plan.has_supervisors() {
                    let sups: Vec<&str> = self
                        .users
                        .iter()
                        .filter(|u| u.role == Role::Supervisor && u.lifecycle != Lifecycle::Removed)
                        .map(|u| u.id.as_str())
                        .collect();
                    if !sups.is_empty() {
                        return Err(CoreError::conflict(format!(
                            "plan {} has no supervisor role; change the role of {} first",
                            plan.as_str(),
                            sups.join(", ")
                        )));
                    }
                }
                if let Some(max) = self.admin.prices.max_seats(plan) {
                    let holders = self.seat_holders();
                    if holders > max {
                        return Err(CoreError::conflict(format!(
                            "plan {} allows at most {max} seats; {holders} are taken by active and invited users",
                            plan.as_str()
                        )));
                    }
                }
                self.plan = plan;
                self.after_plan_change();
                Ok(Reply::Done)
            }
        }
    }

    fn after_plan_change(&mut self) {
        self.note_plan_change();
        // Supervisors may have gone with the plan.
        self.refresh_subscriptions();
    }

    fn set_role(&mut self, by: By, u: UserIx, role: Role) -> Result<Reply, CoreError> {
        let target = self.user(u);
        if target.lifecycle == Lifecycle::Removed {
            return Err(CoreError::conflict(format!("user {} was removed", target.id)));
        }
        if target.role == Role::Owner && role != Role::Owner {
            return Err(match by {
                By::User(a) if self.user(a).role != Role::Owner => {
                    CoreError::forbidden("only the owner may demote the owner")
                }
                _ => CoreError::conflict("the owner cannot be demoted; transfer ownership first"),
            });
        }
        if role == Role::Owner && target.role != Role::Owner {
            return Err(CoreError::bad_request(
                "ownership cannot be given by a role change; the owner transfers it (POST /v1/account/transfer)",
            ));
        }
        if role == Role::Supervisor && !self.plan.has_supervisors() {
            return Err(CoreError::forbidden("the supervisor role needs the pro plan"));
        }
        if target.role == role {
            return Ok(Reply::ReadOnly);
        }
        self.set_user_role(u, role);
        self.publish_user(u);
        Ok(Reply::Done)
    }

    fn transfer_ownership(&mut self, by: By, to: &UserId, confirm_hash: &str) -> Result<Reply, CoreError> {
        let By::User(owner) = by else {
            return Err(CoreError::forbidden("only the owner, logged in, can transfer ownership"));
        };
        // Re-authentication: the owner repeats its own token.
        let confirmed = self.user(owner).token_hash.as_deref().is_some_and(|h| {
            use subtle::ConstantTimeEq;
            h.len() == confirm_hash.len() && bool::from(h.as_bytes().ct_eq(confirm_hash.as_bytes()))
        });
        if !confirmed {
            return Err(CoreError::forbidden("re-authentication failed: confirm with your own token"));
        }
        let t = self.user_to_manage(to)?;
        if t == owner {
            return Err(CoreError::conflict("you already own the account"));
        }
        if !self.user(t).active() {
            return Err(CoreError::conflict(format!(
                "the new owner must be active; {to} is {}",
                self.user(t).lifecycle.as_str()
            )));
        }
        // Demote first: the owner cache holds one owner at a time.
        self.set_user_role(owner, Role::Admin);
        self.set_user_role(t, Role::Owner);
        self.publish_user(t);
        self.publish_user(owner);
        Ok(Reply::Done)
    }

    /// The rules for a deactivation, reactivation or removal asked by a
    /// user (the role check is done).
    fn check_lifecycle_change(&self, actor: UserIx, u: UserIx, to: Lifecycle) -> Result<(), CoreError> {
        let target = self.user(u);
        if target.role == Role::Owner && to != Lifecycle::Active {
            if self.user(actor).role != Role::Owner {
                return Err(CoreError::forbidden("only the owner may deactivate or remove the owner"));
            }
            return Err(CoreError::conflict("the owner cannot be deactivated or removed; transfer ownership first"));
        }
        match (target.lifecycle, to) {
            (Lifecycle::Removed, _) => Err(CoreError::conflict(format!("user {} was removed", target.id))),
            (_, Lifecycle::Invited) => {
                Err(CoreError::bad_request("a user cannot be made invited again; resend its invitation instead"))
            }
            (Lifecycle::Invited, Lifecycle::Active) => {
                Err(CoreError::conflict("an invited user becomes active by accepting its invitation"))
            }
            (Lifecycle::Invited, Lifecycle::Deactivated) => {
                Err(CoreError::conflict("an invitation cannot be deactivated; remove the user to revoke it"))
            }
            (Lifecycle::Deactivated, Lifecycle::Active) => self.check_seat_limit(self.seat_holders(), 1),
            _ => Ok(()),
        }
    }

    // ---- provisioning -----------------------------------------------------

    /// The file's user. Ownership never moves this way: the file's owner
    /// applies only while the account has none (a file owner who is not the
    /// account's owner is provisioned as admin), and the account's owner
    /// stays owner whatever role the file gives it. A role set through the
    /// API is kept.
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
        let owner = self.owner();
        let supervisor_check = |plan: Plan, role: Role, before: Option<Role>| {
            if role == Role::Supervisor && before != Some(Role::Supervisor) && !plan.has_supervisors() {
                return Err(CoreError::forbidden("the supervisor role needs the pro plan"));
            }
            Ok(())
        };
        match self.user_named(&id) {
            Some(u) => {
                let current = self.user(u).role;
                let role = if owner == Some(u) {
                    Role::Owner
                } else if role == Role::Owner && owner.is_some() {
                    // One owner per account: after a transfer at run time
                    // the file's owner does not get the role back.
                    current
                } else {
                    role
                };
                supervisor_check(self.plan, role, Some(current))?;
                self.set_user_role(u, role);
                let user = self.user_mut(u);
                user.email = email;
                // A removed user's token is revoked for good: the file
                // cannot give it a new one.
                if token_hash.is_some() && user.lifecycle != Lifecycle::Removed {
                    user.token_hash = token_hash;
                }
                self.publish_user(u);
            }
            None => {
                let role = if role == Role::Owner && owner.is_some() { Role::Admin } else { role };
                supervisor_check(self.plan, role, None)?;
                u32::try_from(self.users.len()).map_err(|_| CoreError::conflict("too many users"))?;
                let mut user = User::new(id.clone(), email, role, Lifecycle::Active, self.now);
                user.token_hash = token_hash;
                let u = self.add_user(user);
                self.publish_user(u);
                self.charge_new_seats(Some(id));
            }
        }
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
            return Ok(Reply::ReadOnly);
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
        self.set_user_lifecycle(u, lifecycle);
        self.change_user(u, |user, _| {
            if lifecycle != Lifecycle::Active {
                user.conns.clear();
            }
        });
        if lifecycle == Lifecycle::Removed {
            self.unassign_everywhere(u);
            // Its pending invitation goes; its history stays in the store.
            // The API token's hash stays as a tombstone: a removed user can
            // never come back, so the token can never authenticate again,
            // and the shell's directory still knows it, which is how that
            // token gets 403 (removed), not 401 (unknown), as the wire
            // contract says.
            self.user_mut(u).admin.invite = None;
        }
        self.publish_user(u);
        if lifecycle == Lifecycle::Active {
            let id = self.user(u).id.clone();
            self.charge_new_seats(Some(id));
        }
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

    /// The file still names a user an admin removed at run time (removal
    /// is for good, and the file cannot know about it): provisioning leaves
    /// that user off the number instead of refusing to start.
    fn leave_off_removed(&self, spec: &mut NumberSpec) {
        let kept = |id: &UserId| self.user_named(id).is_none_or(|u| self.user(u).lifecycle != Lifecycle::Removed);
        spec.assigned.retain(kept);
        spec.caller_id.retain(kept);
        if let Some(t) = &mut spec.routing.targets {
            t.retain(kept);
        }
    }

    fn resolve_users(&self, ids: &[UserId], what: &str) -> Result<Vec<UserIx>, CoreError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut seen = rustc_hash::FxHashSet::default();
        for id in ids {
            let u = self.user_named(id).ok_or_else(|| CoreError::bad_request(format!("{what}: no user {id}")))?;
            if self.user(u).lifecycle == Lifecycle::Removed {
                return Err(CoreError::bad_request(format!("{what}: user {id} was removed")));
            }
            if seen.insert(u) {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// A number from the API; it must be new to the account. (Numbers are
    /// unique across accounts too; the shell checks that against its
    /// directory, which sees every shard.)
    fn create_number(&mut self, id: NumberId, spec: Box<NumberSpec>) -> Result<Reply, CoreError> {
        if self.number_named(&id).is_some() {
            return Err(CoreError::conflict(format!("number {id} already exists; change it with PATCH")));
        }
        self.check_api_spec(&id, &spec)?;
        let r = self.upsert_number(id.clone(), *spec)?;
        Ok(r)
    }

    /// The number's current configuration as a spec.
    pub(crate) fn spec_of(&self, n: NumberIx) -> NumberSpec {
        let number = self.number(n);
        let ids = |v: &[UserIx]| v.iter().map(|&u| self.user(u).id.clone()).collect();
        NumberSpec {
            name: number.name.clone(),
            assigned: ids(&number.assigned),
            caller_id: ids(&number.caller_id),
            routing: number.routing.clone(),
            queue: number.queue_cfg.clone(),
        }
    }

    fn update_number(&mut self, id: NumberId, patch: Box<NumberPatch>) -> Result<Reply, CoreError> {
        let n = self.number_named(&id).ok_or_else(|| CoreError::not_found(format!("no number {id}")))?;
        if patch.is_empty() {
            return Err(CoreError::bad_request("nothing to change"));
        }
        let current = self.spec_of(n);
        let mut spec = current.clone();
        (*patch).apply(&mut spec);
        if spec == current {
            return Ok(Reply::ReadOnly);
        }
        self.check_api_spec(&id, &spec)?;
        let r = self.upsert_number(id.clone(), spec)?;
        Ok(r)
    }

    /// What the API adds to the provisioning checks (the config loader
    /// makes the same checks on the file): no user listed twice, nobody
    /// both assigned and caller-id only, no overflow forwarding loop among
    /// the account's numbers.
    fn check_api_spec(&self, id: &NumberId, spec: &NumberSpec) -> Result<(), CoreError> {
        let lists = [
            ("assigned", Some(&spec.assigned)),
            ("caller_id", Some(&spec.caller_id)),
            ("routing.targets", spec.routing.targets.as_ref()),
        ];
        for (what, list) in lists {
            let Some(list) = list else { continue };
            let mut seen = BTreeSet::new();
            if let Some(twice) = list.iter().find(|u| !seen.insert(*u)) {
                return Err(CoreError::bad_request(format!("{what} lists {twice} twice")));
            }
        }
        if let Some(both) = spec.caller_id.iter().find(|u| spec.assigned.contains(u)) {
            return Err(CoreError::bad_request(format!(
                "user {both} is in both assigned and caller_id (assigned already allows calling out)"
            )));
        }
        if spec.queue.overflow == Overflow::Forward(id.clone()) {
            return Err(CoreError::bad_request(format!("queue.overflow of {id} forwards to the number itself")));
        }
        // Follow forwards from this number with its new overflow.
        let mut path = vec![id.clone()];
        let mut next = match &spec.queue.overflow {
            Overflow::Forward(to) => Some(to.clone()),
            _ => None,
        };
        while let Some(to) = next {
            if path.contains(&to) {
                path.push(to);
                let shown: Vec<&str> = path.iter().map(NumberId::as_str).collect();
                return Err(CoreError::bad_request(format!(
                    "queue.overflow forwards in a loop: {}",
                    shown.join(" -> ")
                )));
            }
            next = self.number_named(&to).and_then(|m| match &self.number(m).queue_cfg.overflow {
                Overflow::Forward(t) => Some(t.clone()),
                _ => None,
            });
            path.push(to);
        }
        Ok(())
    }

    fn upsert_number(&mut self, id: NumberId, spec: NumberSpec) -> Result<Reply, CoreError> {
        if !is_e164(id.as_str()) {
            return Err(CoreError::bad_request(format!("number {id:?} is not E.164")));
        }
        if spec.queue.overflow == Overflow::Forward(id.clone()) {
            return Err(CoreError::bad_request(format!("queue.overflow of {id} forwards to the number itself")));
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
                let mut seen = rustc_hash::FxHashSet::default();
                for id in ids {
                    if let Some(u) = self.user_named(id)
                        && self.user(u).lifecycle != Lifecycle::Removed
                        && seen.insert(u)
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
        // Announcements may have been switched back on for callers already
        // waiting: a sweep picks them up (and marks the stats).
        self.positions_changed(n);
        // Who may see this number's stats may have changed with it.
        self.refresh_subscriptions();
    }
}

#[cfg(test)]
mod tests;
