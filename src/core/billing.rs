//! Seats and billing: the price table in force, the current billing cycle
//! and the seat ledger. All of it is account state driven by inputs and one
//! core timer (the renewal), so it journals and replays like routing does.
//!
//! The rules (`docs/admin-api.md` has them with examples):
//!
//! - A seat is an `active` user. Invited users are billed once they accept;
//!   deactivated users are not billed; every plan bills at least
//!   `min_seats`.
//! - The account pays for `paid_seats` in the current cycle: set at the
//!   opening and at each renewal to `max(active, min_seats)`, and raised by
//!   one each time the active count goes above it. Each raise is charged at
//!   once, prorated: `price * days_left / cycle_days`, rounded half up to the
//!   cent, where `days_left = cycle_days - whole days since the cycle
//!   started` (so the day the seat is added on is charged).
//! - Removing or deactivating a user refunds nothing: the seat stays paid
//!   until the renewal, and a user activated later in the same cycle takes
//!   it without a new charge.
//! - At renewal (a timer at the cycle's end) the ledger gets an invoice of
//!   `max(active, min_seats) * price` and a new cycle starts.

use super::account::Account;
use super::error::CoreError;
use super::ids::UserId;
use super::team::Plan;
use super::time::Instant;
use super::timers::{Timer, TimerKey};
use crate::config::Billing;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A billing day. Cycles are whole days from the moment they start.
pub const DAY: Duration = Duration::from_secs(86_400);

/// The cycle being billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cycle {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    /// Its length, fixed when it starts (a later price table applies from
    /// the next cycle).
    pub(crate) days: u32,
    pub(crate) timer: TimerKey,
}

impl Cycle {
    /// Whole days since the cycle started (0 on its first day).
    pub(crate) fn day(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_since(self.start).as_secs() / DAY.as_secs();
        u32::try_from(elapsed).unwrap_or(u32::MAX).min(self.days.saturating_sub(1))
    }

    /// Days still to bill, counting today: `days - day`, at least 1.
    pub(crate) fn days_left(&self, now: Instant) -> u32 {
        (self.days - self.day(now)).max(1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// The first cycle's invoice, when billing starts for the account.
    Opened,
    /// A seat added mid-cycle, prorated.
    SeatAdded,
    /// The invoice for a new cycle.
    Renewal,
    /// The plan changed; nothing is charged (the new price applies to seats
    /// added from now on and to the next renewal).
    PlanChanged,
}

/// One line of the seat ledger. Amounts are integer cents.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub at: Instant,
    pub kind: LedgerKind,
    pub plan: Plan,
    /// Seats paid for in the cycle after this entry.
    pub seats: u32,
    /// Monthly price of one seat on `plan`.
    pub unit_cents: u64,
    /// Days charged (the cycle's length for invoices, the days left for a
    /// prorated seat, 0 for a plan change).
    pub days: u32,
    pub cycle_days: u32,
    pub amount_cents: u64,
    /// Who took the added seat, for `seat_added`.
    pub user: Option<UserId>,
}

/// `unit_cents * days / cycle_days`, rounded half up to the cent.
pub fn prorate(unit_cents: u64, days: u32, cycle_days: u32) -> u64 {
    let cycle = u128::from(cycle_days.max(1));
    let num = u128::from(unit_cents) * u128::from(days) * 2 + cycle;
    u64::try_from(num / (2 * cycle)).unwrap_or(u64::MAX)
}

impl Account {
    /// Active users: the seats billed.
    pub(crate) fn active_seats(&self) -> u32 {
        self.active_users
    }

    /// Seats the plan limit counts: active users plus invitations that can
    /// still be accepted (so accepting never goes over the limit).
    pub(crate) fn seat_holders(&self) -> u32 {
        self.seat_holders_at(self.now)
    }

    /// [`Account::seat_holders`] as of `now` (read-only views run at the
    /// engine's time, which may be ahead of the account's last input).
    pub(crate) fn seat_holders_at(&self, now: Instant) -> u32 {
        let pending = self
            .invited_users
            .iter()
            .filter(|&&u| self.user(u).admin.invite.as_ref().is_some_and(|i| !i.expired(now)))
            .count() as u32;
        self.active_users + pending
    }

    /// Refuses taking `extra` more seats when the plan caps seats
    /// (`essentials`).
    pub(crate) fn check_seat_limit(&self, holders: u32, extra: u32) -> Result<(), CoreError> {
        if let Some(max) = self.admin.prices.max_seats(self.plan)
            && holders + extra > max
        {
            return Err(CoreError::conflict(format!(
                "plan {} allows at most {max} seats ({holders} taken by active and invited users)",
                self.plan.as_str()
            )));
        }
        Ok(())
    }

    fn unit_cents(&self) -> u64 {
        self.admin.prices.seat_price_cents(self.plan)
    }

    fn ledger(&mut self, kind: LedgerKind, days: u32, cycle_days: u32, amount_cents: u64, user: Option<UserId>) {
        let entry = LedgerEntry {
            at: self.now,
            kind,
            plan: self.plan,
            seats: self.admin.paid_seats,
            unit_cents: self.unit_cents(),
            days,
            cycle_days,
            amount_cents,
            user,
        };
        self.admin.ledger.push(entry);
    }

    fn start_cycle(&mut self, start: Instant) -> Cycle {
        let days = self.admin.prices.cycle_days.max(1);
        let end = start + DAY * days;
        let timer = self.arm(end, Timer::BillingRenewal);
        let cycle = Cycle { start, end, days, timer };
        self.admin.cycle = Some(cycle);
        cycle
    }

    /// Starts billing if it has not started: the first cycle begins now.
    /// Called after an accepted admin change, never on a refused one.
    pub(crate) fn ensure_cycle(&mut self) {
        if self.admin.cycle.is_some() {
            return;
        }
        let cycle = self.start_cycle(self.now);
        self.admin.paid_seats = self.active_seats().max(self.admin.prices.min_seats);
        let amount = self.unit_cents().saturating_mul(u64::from(self.admin.paid_seats));
        self.ledger(LedgerKind::Opened, cycle.days, cycle.days, amount, None);
    }

    /// Charges, prorated, every active seat above what this cycle has paid
    /// for. `who` is the user whose activation caused it.
    pub(crate) fn charge_new_seats(&mut self, who: Option<UserId>) {
        self.ensure_cycle();
        let Some(cycle) = self.admin.cycle else { return };
        let days = cycle.days_left(self.now);
        let amount = prorate(self.unit_cents(), days, cycle.days);
        while self.active_seats() > self.admin.paid_seats {
            self.admin.paid_seats += 1;
            self.ledger(LedgerKind::SeatAdded, days, cycle.days, amount, who.clone());
        }
    }

    /// Records a plan change (nothing is charged).
    pub(crate) fn note_plan_change(&mut self) {
        self.ensure_cycle();
        let days = self.admin.cycle.map_or(0, |c| c.days);
        self.ledger(LedgerKind::PlanChanged, 0, days, 0, None);
    }

    /// The cycle ended: invoice the next one and start it where the last
    /// one ended (not at `now`, so late ticks do not shift the calendar).
    pub(crate) fn renew_billing(&mut self) {
        let Some(old) = self.admin.cycle else { return };
        self.admin.paid_seats = self.active_seats().max(self.admin.prices.min_seats);
        let cycle = self.start_cycle(old.end);
        let amount = self.unit_cents().saturating_mul(u64::from(self.admin.paid_seats));
        self.ledger(LedgerKind::Renewal, cycle.days, cycle.days, amount, None);
    }

    /// A new price table from the config file. Applies to charges from now
    /// on; the current cycle keeps its length.
    pub(crate) fn set_prices(&mut self, prices: Billing) -> Result<(), CoreError> {
        prices.validate().map_err(CoreError::bad_request)?;
        self.admin.prices = prices;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proration_rounds_half_up_to_the_cent() {
        assert_eq!(prorate(2900, 15, 30), 1450);
        assert_eq!(prorate(2900, 30, 30), 2900);
        // 4900 * 1 / 30 = 163.33 -> 163; 4900 * 2 / 30 = 326.67 -> 327.
        assert_eq!(prorate(4900, 1, 30), 163);
        assert_eq!(prorate(4900, 2, 30), 327);
        // 1 * 15 / 30 = 0.5 exactly: half rounds up.
        assert_eq!(prorate(1, 15, 30), 1);
        assert_eq!(prorate(1, 14, 30), 0);
        assert_eq!(prorate(u64::MAX, 366, 366), u64::MAX);
    }

    #[test]
    fn cycle_days_count_whole_days_and_today_is_billed() {
        let start = Instant::from_millis(1_000_000);
        let timer = crate::core::timers::Timers::default().arm(start, Timer::BillingRenewal);
        let c = Cycle { start, end: start + DAY * 30, days: 30, timer };
        assert_eq!(c.days_left(start), 30);
        assert_eq!(c.days_left(start + DAY * 15), 15);
        assert_eq!(c.days_left(start + DAY * 15 + Duration::from_secs(3600)), 15);
        assert_eq!(c.days_left(start + DAY * 14 + Duration::from_secs(86_399)), 16);
        assert_eq!(c.days_left(start + DAY * 29 + Duration::from_secs(86_399)), 1);
        assert_eq!(c.days_left(start + DAY * 40), 1, "never below one day");
    }
}
