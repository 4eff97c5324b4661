//! The shell's shared lookup tables: who a token is, which shard an input
//! belongs to, which connections a user has, which gateway carries a call.
//! They mirror what the engines decide (via `Output::Directory`) and are
//! read from many tasks, hence dashmap. Nothing here decides anything.

use super::conn::ConnHandle;
use crate::config::GatewayConfig;
use crate::core::ids::{AccountId, ConnId, GatewayName, NumberId, UserId};
use crate::core::team::{Lifecycle, Role};
use crate::core::{DirectoryChange, RouteKey};
use dashmap::DashMap;
use rustc_hash::FxHasher;
use std::hash::{Hash, Hasher};
use subtle::ConstantTimeEq;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub role: Role,
    pub lifecycle: Lifecycle,
    pub token_hash: Option<String>,
}

/// Who presented a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    User { account: AccountId, user: UserId, role: Role },
    Gateway { name: GatewayName, accounts: Option<Vec<AccountId>> },
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Missing or unknown token: 401.
    Unknown,
    /// A user who may not log in (deactivated, removed, still invited): 403.
    NotActive(Lifecycle),
}

#[derive(Debug)]
pub struct Directory {
    shards: usize,
    gateways: Vec<GatewayConfig>,
    users: DashMap<(AccountId, UserId), UserEntry>,
    tokens: DashMap<String, (AccountId, UserId)>,
    numbers: DashMap<NumberId, AccountId>,
    routes: DashMap<RouteKey, AccountId>,
    /// Open softphone connections.
    pub conns: DashMap<ConnId, ConnHandle>,
    pub user_conns: DashMap<(AccountId, UserId), Vec<ConnId>>,
    /// Connected gateways by name.
    pub gateways_live: DashMap<GatewayName, ConnHandle>,
    /// The gateway that carries each call or message: the one that told
    /// us about it, or the first one told about it.
    pub carrier: DashMap<RouteKey, GatewayName>,
}

/// An id a gateway chose is bound to another account's call or message.
#[derive(Debug, thiserror::Error)]
#[error("the id belongs to another call")]
pub struct IdTaken;

/// The shard of an account among `shards`: a stable hash of its id, the
/// same in every process, so recovery and serving agree.
pub fn shard_index(account: &AccountId, shards: usize) -> usize {
    let mut h = FxHasher::default();
    account.as_str().hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// Lowercase hex SHA-256, the only form in which tokens are kept.
pub fn hash_token(token: &str) -> String {
    crate::config::hash_token(token)
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Directory {
    pub fn new(shards: usize, gateways: Vec<GatewayConfig>) -> Directory {
        Directory {
            shards: shards.max(1),
            gateways,
            users: DashMap::new(),
            tokens: DashMap::new(),
            numbers: DashMap::new(),
            routes: DashMap::new(),
            conns: DashMap::new(),
            user_conns: DashMap::new(),
            gateways_live: DashMap::new(),
            carrier: DashMap::new(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// Accounts are spread over shards by a stable hash of their id.
    pub fn shard_of(&self, account: &AccountId) -> usize {
        shard_index(account, self.shards)
    }

    pub fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Unknown);
        }
        let hash = hash_token(token);
        // Every gateway is compared, in constant time, whatever matches.
        let mut gateway = None;
        for g in &self.gateways {
            if ct_eq(&g.token_hash, &hash) {
                gateway = Some(Identity::Gateway { name: g.name.clone(), accounts: g.accounts.clone() });
            }
        }
        if let Some(g) = gateway {
            return Ok(g);
        }
        let Some(key) = self.tokens.get(&hash).map(|e| e.value().clone()) else {
            return Err(AuthError::Unknown);
        };
        let Some(entry) = self.users.get(&key).map(|e| e.value().clone()) else {
            return Err(AuthError::Unknown);
        };
        if !entry.token_hash.as_deref().is_some_and(|h| ct_eq(h, &hash)) {
            return Err(AuthError::Unknown);
        }
        if entry.lifecycle != Lifecycle::Active {
            return Err(AuthError::NotActive(entry.lifecycle));
        }
        Ok(Identity::User { account: key.0, user: key.1, role: entry.role })
    }

    /// The user a token hash signs in as, if any.
    pub fn token_holder(&self, hash: &str) -> Option<(AccountId, UserId)> {
        self.tokens.get(hash).map(|e| e.value().clone())
    }

    pub fn user(&self, account: &AccountId, user: &UserId) -> Option<UserEntry> {
        self.users.get(&(account.clone(), user.clone())).map(|e| e.value().clone())
    }

    pub fn account_of_number(&self, n: &NumberId) -> Option<AccountId> {
        self.numbers.get(n).map(|e| e.value().clone())
    }

    pub fn account_of(&self, key: &RouteKey) -> Option<AccountId> {
        self.routes.get(key).map(|e| e.value().clone())
    }

    /// Claims a number for `account` before it is created, atomically across
    /// shards. `Ok(true)` if this call claimed it, `Ok(false)` if the
    /// account already had it, `Err(owner)` if another account has it.
    pub fn reserve_number(&self, number: &NumberId, account: &AccountId) -> Result<bool, AccountId> {
        match self.numbers.entry(number.clone()) {
            dashmap::Entry::Occupied(e) if e.get() == account => Ok(false),
            dashmap::Entry::Occupied(e) => Err(e.get().clone()),
            dashmap::Entry::Vacant(e) => {
                e.insert(account.clone());
                Ok(true)
            }
        }
    }

    /// Gives back a claim whose creation failed.
    pub fn release_number(&self, number: &NumberId, account: &AccountId) {
        self.numbers.remove_if(number, |_, a| a == account);
    }

    /// Binds an id a gateway chose (a new call's `call_id`) to `account`,
    /// unless another account holds it: ids are the only thing later events
    /// carry, so taking over another account's binding would hand that
    /// account's call to this one. `Ok(true)` if this bound it,
    /// `Ok(false)` if `account` held it already, `Err` when another account
    /// holds it.
    pub fn bind_new(&self, key: RouteKey, account: &AccountId) -> Result<bool, IdTaken> {
        match self.routes.entry(key) {
            dashmap::Entry::Occupied(e) if e.get() != account => Err(IdTaken),
            dashmap::Entry::Occupied(_) => Ok(false),
            dashmap::Entry::Vacant(e) => {
                e.insert(account.clone());
                Ok(true)
            }
        }
    }

    /// Drops `account`'s binding of `key` and its carrier; a binding held
    /// by another account stays.
    pub fn unbind(&self, key: &RouteKey, account: &AccountId) {
        if self.routes.remove_if(key, |_, a| a == account).is_some() {
            self.carrier.remove(key);
        }
    }

    /// Whether `gateway` may carry `account`'s traffic.
    pub fn gateway_serves(&self, gateway: &GatewayName, account: &AccountId) -> bool {
        self.gateways.iter().any(|g| g.name == *gateway && g.accounts.as_ref().is_none_or(|a| a.contains(account)))
    }

    pub fn apply(&self, change: &DirectoryChange) {
        match change {
            DirectoryChange::Bind { account, key } => {
                self.routes.insert(key.clone(), account.clone());
            }
            DirectoryChange::Unbind { account, key } => self.unbind(key, account),
            DirectoryChange::Number { account, number, present } => {
                if *present {
                    self.numbers.insert(number.clone(), account.clone());
                } else {
                    self.numbers.remove_if(number, |_, a| a == account);
                }
            }
            DirectoryChange::User { account, user, role, lifecycle, token_hash } => {
                let key = (account.clone(), user.clone());
                let old = self.users.insert(
                    key.clone(),
                    UserEntry { role: *role, lifecycle: *lifecycle, token_hash: token_hash.clone() },
                );
                if let Some(old_hash) = old.and_then(|o| o.token_hash)
                    && Some(&old_hash) != token_hash.as_ref()
                {
                    // Another user may hold it by now (a file that moved
                    // a token from one user to another).
                    self.tokens.remove_if(&old_hash, |_, holder| *holder == key);
                }
                if let Some(h) = token_hash {
                    self.tokens.insert(h.clone(), key);
                }
            }
        }
    }

    /// The gateways allowed to serve `account`, by name order.
    pub fn gateways_for(&self, account: &AccountId) -> Vec<GatewayName> {
        let mut names: Vec<GatewayName> = self
            .gateways
            .iter()
            .filter(|g| g.accounts.as_ref().is_none_or(|a| a.contains(account)))
            .map(|g| g.name.clone())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let g =
            GatewayConfig { name: "edge".into(), token_hash: hash_token("gw"), accounts: Some(vec!["acme".into()]) };
        let d = Directory::new(2, vec![g]);
        d.apply(&DirectoryChange::User {
            account: "acme".into(),
            user: "alice".into(),
            role: Role::Owner,
            lifecycle: Lifecycle::Active,
            token_hash: Some(hash_token("alice-token")),
        });
        d
    }

    #[test]
    fn tokens_resolve_to_identities() {
        let d = dir();
        assert_eq!(
            d.authenticate("alice-token"),
            Ok(Identity::User { account: "acme".into(), user: "alice".into(), role: Role::Owner })
        );
        assert!(matches!(d.authenticate("gw"), Ok(Identity::Gateway { .. })));
        assert_eq!(d.authenticate("nope"), Err(AuthError::Unknown));
        assert_eq!(d.authenticate(""), Err(AuthError::Unknown));
    }

    #[test]
    fn deactivation_and_token_change_take_effect() {
        let d = dir();
        let change = |lifecycle, token: &str| DirectoryChange::User {
            account: "acme".into(),
            user: "alice".into(),
            role: Role::Owner,
            lifecycle,
            token_hash: Some(hash_token(token)),
        };
        d.apply(&change(Lifecycle::Deactivated, "alice-token"));
        assert_eq!(d.authenticate("alice-token"), Err(AuthError::NotActive(Lifecycle::Deactivated)));
        d.apply(&change(Lifecycle::Active, "new-token"));
        assert_eq!(d.authenticate("alice-token"), Err(AuthError::Unknown));
        assert!(d.authenticate("new-token").is_ok());
    }

    #[test]
    fn a_call_id_is_bound_to_one_account_and_only_it_unbinds_it() {
        let d = dir();
        let key = RouteKey::Call("c1".into());
        let (acme, globex): (AccountId, AccountId) = ("acme".into(), "globex".into());
        assert!(matches!(d.bind_new(key.clone(), &acme), Ok(true)));
        assert!(matches!(d.bind_new(key.clone(), &acme), Ok(false)), "the same account again");
        d.carrier.insert(key.clone(), "edge".into());
        assert!(d.bind_new(key.clone(), &globex).is_err());
        d.apply(&DirectoryChange::Unbind { account: globex.clone(), key: key.clone() });
        assert_eq!(d.account_of(&key), Some(acme.clone()), "another account's unbind leaves it");
        assert!(d.carrier.contains_key(&key));
        d.unbind(&key, &acme);
        assert_eq!((d.account_of(&key), d.carrier.contains_key(&key)), (None, false));
        assert!(d.bind_new(key.clone(), &globex).is_ok(), "free again");
    }

    #[test]
    fn a_gateway_serves_only_its_accounts() {
        let d = dir();
        assert!(d.gateway_serves(&"edge".into(), &"acme".into()));
        assert!(!d.gateway_serves(&"edge".into(), &"globex".into()));
        assert!(!d.gateway_serves(&"elsewhere".into(), &"acme".into()));
    }

    #[test]
    fn a_number_is_claimed_by_one_account_only() {
        let d = dir();
        let n: NumberId = "+15550100".into();
        assert_eq!(d.reserve_number(&n, &"acme".into()), Ok(true));
        assert_eq!(d.reserve_number(&n, &"acme".into()), Ok(false));
        assert_eq!(d.reserve_number(&n, &"globex".into()), Err("acme".into()));
        d.release_number(&n, &"globex".into());
        assert_eq!(d.account_of_number(&n), Some("acme".into()), "only the claimer can release");
        d.release_number(&n, &"acme".into());
        assert_eq!(d.reserve_number(&n, &"globex".into()), Ok(true));
    }

    #[test]
    fn shards_are_stable() {
        let d = dir();
        let a: AccountId = "acme".into();
        assert_eq!(d.shard_of(&a), d.shard_of(&a));
        assert!(d.shard_of(&a) < 2);
    }
}
