//! Invitations: inviting users (one or a CSV batch), resending, accepting.
//!
//! An invited user exists from the start (so numbers can be assigned to it
//! and its email is taken) but cannot log in, is never rung and holds no
//! billed seat. Accepting turns it `active`, sets its API token and bills
//! the seat. Invitations expire [`INVITE_TTL`] after they were (re)sent.
//!
//! Tokens are never seen here: the shell generates them and hands in their
//! SHA-256 hashes, so the journal and snapshots hold no secret.

use super::account::Account;
use super::error::CoreError;
use super::ids::{NumberId, UserId, is_e164};
use super::team::{Lifecycle, Role};
use super::time::Instant;
use super::user::User;
use super::{Reply, UserIx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long an invitation can be accepted after it was sent or resent.
pub const INVITE_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Most rows one batch may carry (a CSV upload).
pub const MAX_BATCH: usize = 1000;

/// A pending invitation: the hash of its token and when it was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Invite {
    pub(crate) hash: String,
    pub(crate) sent_at: Instant,
}

impl Invite {
    pub(crate) fn expires_at(&self) -> Instant {
        self.sent_at + INVITE_TTL
    }

    /// Valid for exactly [`INVITE_TTL`]: at `sent_at + 7 days` it is expired.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        now >= self.expires_at()
    }
}

/// One user to invite.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InviteSpec {
    /// The new user's id; derived from the email when `None`.
    pub user: Option<UserId>,
    pub email: String,
    pub role: Role,
    /// A number to assign the user to.
    pub number: Option<NumberId>,
    /// SHA-256 (hex) of the invite token the shell generated.
    pub invite_hash: String,
}

/// Checks the shape of an email address: one `@`, a non-empty local part,
/// a domain of at least two non-empty dot-separated labels, no whitespace or
/// control characters, at most 254 characters. (The same rule as the config
/// file's.)
pub fn valid_email(email: &str) -> bool {
    if email.is_empty() || email.chars().count() > super::admin::MAX_EMAIL_CHARS {
        return false;
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty() && !domain.contains('@') && domain.contains('.') && domain.split('.').all(|l| !l.is_empty())
}

/// Checks a user id: 1 to 100 characters, no whitespace, control characters
/// or `/` (ids appear in URL paths).
pub fn valid_user_id(id: &str) -> Result<(), CoreError> {
    if id.is_empty() || id.chars().count() > super::admin::MAX_NAME_CHARS {
        return Err(CoreError::bad_request("user id must be 1 to 100 characters"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(CoreError::bad_request(format!(
            "user id {id:?} must not contain spaces, control characters or '/'"
        )));
    }
    Ok(())
}

/// Emails compare without regard to ASCII case.
fn email_key(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

/// What a batch already claimed while it is checked row by row.
#[derive(Default)]
struct Claimed {
    emails: BTreeSet<String>,
    ids: BTreeSet<UserId>,
    hashes: BTreeSet<String>,
    seats: u32,
}

impl Account {
    /// Checks each row of a batch as if the rows before it (the valid ones)
    /// had been applied: `Ok(user id)` for a row that would be invited, the
    /// refusal otherwise. Reads state only.
    pub(crate) fn check_invites(&self, specs: &[InviteSpec], now: Instant) -> Vec<Result<UserId, CoreError>> {
        let mut claimed = Claimed::default();
        let holders = self.seat_holders_at(now);
        specs
            .iter()
            .map(|spec| {
                let id = self.check_invite(spec, &claimed, holders)?;
                claimed.emails.insert(email_key(&spec.email));
                claimed.ids.insert(id.clone());
                claimed.hashes.insert(spec.invite_hash.clone());
                claimed.seats += 1;
                Ok(id)
            })
            .collect()
    }

    fn check_invite(&self, spec: &InviteSpec, claimed: &Claimed, holders: u32) -> Result<UserId, CoreError> {
        let email = spec.email.trim();
        if !valid_email(email) {
            return Err(CoreError::bad_request(format!("email {email:?} is not a valid address")));
        }
        match spec.role {
            Role::Owner => {
                return Err(CoreError::bad_request(
                    "nobody can be invited as owner; invite as admin and transfer ownership",
                ));
            }
            Role::Supervisor if !self.plan.has_supervisors() => {
                return Err(CoreError::forbidden("the supervisor role needs the pro plan"));
            }
            _ => {}
        }
        if let Some(n) = &spec.number {
            if !is_e164(n.as_str()) {
                return Err(CoreError::bad_request(format!("phone_number {n:?} is not E.164")));
            }
            if self.number_named(n).is_none() {
                return Err(CoreError::not_found(format!("no number {n} in this account")));
            }
        }
        let key = email_key(email);
        let taken = self.users.iter().any(|u| u.lifecycle != Lifecycle::Removed && email_key(&u.email) == key);
        if taken || claimed.emails.contains(&key) {
            return Err(CoreError::conflict(format!("{email} is already a user of this account")));
        }
        if spec.invite_hash.is_empty()
            || claimed.hashes.contains(&spec.invite_hash)
            || self.invite_taken(&spec.invite_hash)
        {
            return Err(CoreError::conflict("invite token already in use"));
        }
        self.check_seat_limit(holders + claimed.seats, 1)?;
        match &spec.user {
            Some(id) => {
                valid_user_id(id.as_str())?;
                if self.user_named(id).is_some() || claimed.ids.contains(id) {
                    return Err(CoreError::conflict(format!("user id {id} is taken")));
                }
                Ok(id.clone())
            }
            None => Ok(self.derive_user_id(email, &claimed.ids)),
        }
    }

    fn invite_taken(&self, hash: &str) -> bool {
        self.users.iter().any(|u| u.admin.invite.as_ref().is_some_and(|i| i.hash == hash))
    }

    /// An id from the email's local part: lowercase letters, digits, `.`,
    /// `_` and `-` kept, anything else turned into `-`; `-2`, `-3`, ... added
    /// until it is free (removed users keep their ids, so theirs stay taken).
    fn derive_user_id(&self, email: &str, claimed: &BTreeSet<UserId>) -> UserId {
        let local = email.split('@').next().unwrap_or_default();
        let mut base: String = local
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }
            })
            .take(60)
            .collect();
        if base.trim_matches('-').is_empty() {
            base = "user".into();
        }
        let free = |id: &UserId| self.user_named(id).is_none() && !claimed.contains(id);
        let first = UserId::from(base.as_str());
        if free(&first) {
            return first;
        }
        (2u64..).map(|n| UserId::from(format!("{base}-{n}"))).find(free).unwrap_or(first)
    }

    /// Invites every row, or none: the first refused row refuses the batch
    /// (the shell checks rows first with [`Account::check_invites`] and sends
    /// only the good ones).
    pub(crate) fn invite(&mut self, specs: Vec<InviteSpec>) -> Result<Reply, CoreError> {
        if specs.is_empty() {
            return Err(CoreError::bad_request("nothing to invite"));
        }
        if specs.len() > MAX_BATCH {
            return Err(CoreError::bad_request(format!("at most {MAX_BATCH} invitations at once")));
        }
        let checked = self.check_invites(&specs, self.now);
        let several = specs.len() > 1;
        let mut ids = Vec::with_capacity(specs.len());
        for (i, r) in checked.into_iter().enumerate() {
            match r {
                Ok(id) => ids.push(id),
                Err(e) if several => {
                    return Err(CoreError::new(e.code, format!("invitation {}: {}", i + 1, e.message)));
                }
                Err(e) => return Err(e),
            }
        }
        if u32::try_from(self.users.len() + ids.len()).is_err() {
            return Err(CoreError::conflict("too many users"));
        }
        for (spec, id) in specs.into_iter().zip(ids) {
            let mut user =
                User::new(id.clone(), spec.email.trim().to_string(), spec.role, Lifecycle::Invited, self.now);
            user.admin.invite = Some(Invite { hash: spec.invite_hash, sent_at: self.now });
            let u = self.add_user(user);
            if let Some(n) = spec.number.as_ref().and_then(|n| self.number_named(n)) {
                self.number_mut(n).assigned.push(u);
                self.rebuild_number(n, &[]);
            }
            self.publish_user(u);
        }
        Ok(Reply::Done)
    }

    /// A new token and a fresh [`INVITE_TTL`] for a pending invitation.
    pub(crate) fn resend_invite(&mut self, u: UserIx, invite_hash: String) -> Result<Reply, CoreError> {
        let user = self.user(u);
        if user.lifecycle != Lifecycle::Invited {
            return Err(CoreError::conflict(format!(
                "user {} is {}; only invited users have an invitation to resend",
                user.id,
                user.lifecycle.as_str()
            )));
        }
        if invite_hash.is_empty() || self.invite_taken(&invite_hash) {
            return Err(CoreError::conflict("invite token already in use"));
        }
        // An expired invitation holds no seat; renewing it takes one again.
        if user.admin.invite.as_ref().is_none_or(|i| i.expired(self.now)) {
            self.check_seat_limit(self.seat_holders(), 1)?;
        }
        let now = self.now;
        self.user_mut(u).admin.invite = Some(Invite { hash: invite_hash, sent_at: now });
        self.publish_user(u);
        Ok(Reply::Done)
    }

    /// The invitee presents its invitation: the user becomes active with the
    /// given API token hash, and its seat is billed.
    pub(crate) fn accept_invite(&mut self, invite_hash: &str, token_hash: String) -> Result<Reply, CoreError> {
        let u = self.invitee(invite_hash).ok_or_else(|| CoreError::not_found("unknown or already used invitation"))?;
        if let Some(invite) = &self.user(u).admin.invite
            && invite.expired(self.now)
        {
            return Err(CoreError::conflict(format!(
                "the invitation expired at {}; ask an admin to resend it",
                invite.expires_at().rfc3339()
            )));
        }
        if token_hash.is_empty() || self.users.iter().any(|x| x.token_hash.as_deref() == Some(token_hash.as_str())) {
            return Err(CoreError::conflict("token already in use"));
        }
        self.check_seat_limit(self.active_seats(), 1)?;
        let id = self.user(u).id.clone();
        self.set_user_lifecycle(u, Lifecycle::Active);
        self.change_user(u, |user, _| {
            user.token_hash = Some(token_hash);
            user.admin.invite = None;
        });
        self.publish_user(u);
        self.charge_new_seats(Some(id));
        Ok(Reply::Done)
    }

    /// The account and user holding the invitation with this hash, if any
    /// (pending or expired).
    pub(crate) fn invitee(&self, invite_hash: &str) -> Option<UserIx> {
        self.users
            .iter()
            .position(|u| {
                u.lifecycle == Lifecycle::Invited && u.admin.invite.as_ref().is_some_and(|i| i.hash == invite_hash)
            })
            .map(|i| UserIx(i as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_shapes() {
        for good in ["a@b.co", "first.last+tag@mail.example.org", "x@sub.domain.io"] {
            assert!(valid_email(good), "{good}");
        }
        for bad in ["", "ab.co", "@b.co", "a@b", "a@.co", "a@b.", "a b@c.co", "a@b@c.co", "a@b..co"] {
            assert!(!valid_email(bad), "{bad}");
        }
        assert!(!valid_email(&format!("{}@b.co", "a".repeat(260))));
    }

    #[test]
    fn user_ids() {
        assert!(valid_user_id("bob").is_ok());
        for bad in ["", "a b", "a/b", "a\tb"] {
            assert!(valid_user_id(bad).is_err(), "{bad:?}");
        }
        assert!(valid_user_id(&"x".repeat(101)).is_err());
    }
}
