//! Read-only views of an account for the admin API: plain serde structs the
//! shell renders as JSON. Who may see what is decided here, with the same
//! permission matrix the commands use ([`Role::may`]); the shell only passes
//! the authenticated caller along.

use super::Engine;
use super::account::Account;
use super::admin::{Actor, By};
use super::billing::LedgerKind;
use super::error::CoreError;
use super::ids::{AccountId, NumberId, UserId};
use super::invite::InviteSpec;
use super::settings::{QueueSettings, RoutingSettings};
use super::team::{Action, Lifecycle, Plan, Role};
use super::time::Instant;
use super::{NumberIx, UserIx};
use crate::protocol::agent::Status;
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AccountView {
    pub id: AccountId,
    pub plan: Plan,
    pub owner: Option<UserId>,
    /// The caller.
    pub you: UserId,
    pub role: Role,
    pub users: LifecycleCounts,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LifecycleCounts {
    pub invited: u32,
    pub active: u32,
    pub deactivated: u32,
    pub removed: u32,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
    pub role: Role,
    /// `invited`, `active`, `deactivated` or `removed`.
    pub status: Lifecycle,
    /// Live presence of an active user (`offline` when not connected).
    pub presence: Option<Status>,
    /// Numbers the user is assigned to (sees and is rung by default).
    pub assigned: Vec<NumberId>,
    /// Numbers the user may only call out from.
    pub caller_id: Vec<NumberId>,
    pub invite: Option<InviteView>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InviteView {
    /// RFC 3339.
    pub sent_at: String,
    pub expires_at: String,
    pub expired: bool,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NumberView {
    pub number: NumberId,
    pub name: String,
    pub assigned: Vec<UserId>,
    pub caller_id: Vec<UserId>,
    pub routing: RoutingSettings,
    pub queue: QueueSettings,
    /// Who is rung, resolved (the configured targets or the assigned users,
    /// without removed users).
    pub targets: Vec<UserId>,
    /// Callers waiting now.
    pub waiting: u32,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BillingView {
    pub plan: Plan,
    /// Monthly price of one seat on the plan.
    pub seat_price_cents: u64,
    pub min_seats: u32,
    /// `null` when the plan has no cap.
    pub max_seats: Option<u32>,
    pub seats: SeatCounts,
    /// `null` until billing has started (the account's first change).
    pub cycle: Option<CycleView>,
    pub next_invoice: InvoiceView,
    pub ledger: Vec<LedgerView>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SeatCounts {
    /// Active users: billed.
    pub active: u32,
    /// Invitations not yet accepted: not billed.
    pub invited: u32,
    /// Not billed.
    pub deactivated: u32,
    /// Paid for in the current cycle (removals and deactivations are not
    /// refunded).
    pub paid: u32,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CycleView {
    pub start: String,
    pub renews_at: String,
    pub days: u32,
    /// Whole days since the cycle started (0 on its first day).
    pub day: u32,
    /// What a seat added now would be charged for.
    pub days_left: u32,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InvoiceView {
    /// The renewal date (`null` before billing has started).
    pub at: Option<String>,
    pub seats: u32,
    pub unit_cents: u64,
    pub amount_cents: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LedgerView {
    pub at: String,
    pub kind: LedgerKind,
    pub plan: Plan,
    pub seats: u32,
    pub unit_cents: u64,
    pub days: u32,
    pub cycle_days: u32,
    pub amount_cents: u64,
    pub user: Option<UserId>,
}

fn ts(t: Instant) -> String {
    t.rfc3339()
}

impl Engine {
    fn account_ref(&self, account: &AccountId) -> Result<&Account, CoreError> {
        self.account_ix
            .get(account)
            .map(|&a| &self.accounts[a])
            .ok_or_else(|| CoreError::not_found(format!("no account {account}")))
    }

    /// The account and the caller, who must be an active user of it.
    fn caller<'a>(&'a self, account: &AccountId, actor: &Actor) -> Result<(&'a Account, UserIx), CoreError> {
        let acc = self.account_ref(account)?;
        match acc.resolve_actor(actor)? {
            By::User(u) => Ok((acc, u)),
            By::System | By::Invitee => Err(CoreError::forbidden("views are for logged-in users")),
        }
    }

    /// Whether the caller's role allows `action` (the shell asks before
    /// work it does on the caller's behalf, such as parsing an upload or
    /// looking a number up in the global directory).
    pub fn authorize(&self, account: &AccountId, actor: &Actor, action: Action) -> Result<(), CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        acc.authorize(By::User(u), action)
    }

    pub fn view_account(&self, account: &AccountId, actor: &Actor) -> Result<AccountView, CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        acc.authorize(By::User(u), Action::ViewAccount)?;
        let mut users = LifecycleCounts::default();
        for user in &acc.users {
            match user.lifecycle {
                Lifecycle::Invited => users.invited += 1,
                Lifecycle::Active => users.active += 1,
                Lifecycle::Deactivated => users.deactivated += 1,
                Lifecycle::Removed => users.removed += 1,
            }
        }
        Ok(AccountView {
            id: acc.id.clone(),
            plan: acc.plan,
            owner: acc.owner().map(|o| acc.user(o).id.clone()),
            you: acc.user(u).id.clone(),
            role: acc.user(u).role,
            users,
        })
    }

    /// Every user of the account, removed ones included (their history
    /// stays), in creation order.
    pub fn view_users(&self, account: &AccountId, actor: &Actor) -> Result<Vec<UserView>, CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        acc.authorize(By::User(u), Action::ViewTeam)?;
        Ok((0..acc.users.len() as u32).map(|i| acc.user_view(UserIx(i), self.now)).collect())
    }

    /// One user: managers see anyone, everyone sees itself.
    pub fn view_user(&self, account: &AccountId, actor: &Actor, user: &UserId) -> Result<UserView, CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        if acc.user(u).id != *user {
            acc.authorize(By::User(u), Action::ViewTeam)?;
        }
        let target = acc.user_named(user).ok_or_else(|| CoreError::not_found(format!("no user {user}")))?;
        Ok(acc.user_view(target, self.now))
    }

    /// Managers see every number; others the numbers they are assigned to
    /// or may use as caller id.
    pub fn view_numbers(&self, account: &AccountId, actor: &Actor) -> Result<Vec<NumberView>, CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        let all = acc.authorize(By::User(u), Action::ViewAllNumbers).is_ok();
        Ok((0..acc.numbers.len() as u32)
            .map(NumberIx)
            .filter(|&n| all || acc.may_use(u, n))
            .map(|n| acc.number_view(n))
            .collect())
    }

    pub fn view_number(&self, account: &AccountId, actor: &Actor, number: &NumberId) -> Result<NumberView, CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        let n = acc.number_named(number).ok_or_else(|| CoreError::not_found(format!("no number {number}")))?;
        if !acc.may_use(u, n) {
            acc.authorize(By::User(u), Action::ViewAllNumbers)?;
        }
        Ok(acc.number_view(n))
    }

    /// Seats, the current cycle, the next invoice and the ledger: the
    /// owner only.
    pub fn view_billing(&self, account: &AccountId, actor: &Actor) -> Result<BillingView, CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        acc.authorize(By::User(u), Action::Billing)?;
        Ok(acc.billing_view(self.now))
    }

    /// Checks a batch of invitations row by row without changing anything
    /// (bulk invite: the shell sends only the rows that pass).
    pub fn check_invites(
        &self,
        account: &AccountId,
        actor: &Actor,
        specs: &[InviteSpec],
    ) -> Result<Vec<Result<UserId, CoreError>>, CoreError> {
        let (acc, u) = self.caller(account, actor)?;
        acc.authorize(By::User(u), Action::ManageTeam)?;
        Ok(acc.check_invites(specs, self.now))
    }

    /// The account and user an invitation (by token hash) belongs to.
    pub fn find_invite(&self, invite_hash: &str) -> Option<(AccountId, UserId)> {
        self.accounts.iter().find_map(|acc| acc.invitee(invite_hash).map(|u| (acc.id.clone(), acc.user(u).id.clone())))
    }

    /// A user's view without a permission check, for the shell to answer a
    /// request it just made on the caller's behalf (the command was checked).
    pub fn user_view_unchecked(&self, account: &AccountId, user: &UserId) -> Option<UserView> {
        let acc = self.account_ref(account).ok()?;
        acc.user_named(user).map(|u| acc.user_view(u, self.now))
    }
}

impl Account {
    fn user_view(&self, u: UserIx, now: Instant) -> UserView {
        let user = self.user(u);
        let ids = |v: &[NumberIx]| v.iter().map(|&n| self.number(n).id.clone()).collect();
        UserView {
            id: user.id.clone(),
            email: user.email.clone(),
            role: user.role,
            status: user.lifecycle,
            presence: user.active().then(|| user.status().0),
            assigned: ids(&user.assigned),
            caller_id: ids(&user.caller_id),
            invite: user.admin.invite.as_ref().map(|i| InviteView {
                sent_at: ts(i.sent_at),
                expires_at: ts(i.expires_at()),
                expired: i.expired(now),
            }),
        }
    }

    fn number_view(&self, n: NumberIx) -> NumberView {
        let number = self.number(n);
        let spec = self.spec_of(n);
        NumberView {
            number: number.id.clone(),
            name: spec.name,
            assigned: spec.assigned,
            caller_id: spec.caller_id,
            routing: spec.routing,
            queue: spec.queue,
            targets: number.targets.iter().map(|&u| self.user(u).id.clone()).collect(),
            waiting: number.callers.len() as u32,
        }
    }

    fn billing_view(&self, now: Instant) -> BillingView {
        let prices = &self.admin.prices;
        let unit = prices.seat_price_cents(self.plan);
        let count = |l: Lifecycle| self.users.iter().filter(|u| u.lifecycle == l).count() as u32;
        let active = count(Lifecycle::Active);
        let cycle = self.admin.cycle;
        let seats_next = active.max(prices.min_seats);
        BillingView {
            plan: self.plan,
            seat_price_cents: unit,
            min_seats: prices.min_seats,
            max_seats: prices.max_seats(self.plan),
            seats: SeatCounts {
                active,
                invited: count(Lifecycle::Invited),
                deactivated: count(Lifecycle::Deactivated),
                paid: self.admin.paid_seats,
            },
            cycle: cycle.map(|c| CycleView {
                start: ts(c.start),
                renews_at: ts(c.end),
                days: c.days,
                day: c.day(now),
                days_left: c.days_left(now),
            }),
            next_invoice: InvoiceView {
                at: cycle.map(|c| ts(c.end)),
                seats: seats_next,
                unit_cents: unit,
                amount_cents: unit.saturating_mul(u64::from(seats_next)),
            },
            ledger: self
                .admin
                .ledger
                .iter()
                .map(|e| LedgerView {
                    at: ts(e.at),
                    kind: e.kind,
                    plan: e.plan,
                    seats: e.seats,
                    unit_cents: e.unit_cents,
                    days: e.days,
                    cycle_days: e.cycle_days,
                    amount_cents: e.amount_cents,
                    user: e.user.clone(),
                })
                .collect(),
        }
    }
}
