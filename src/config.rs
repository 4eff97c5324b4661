//! The TOML config file: parsing, validation with file and line, and the
//! provisioning inputs it implies.
//!
//! The format is the one in `shared/PROTOCOL.md` ("Running the server") plus
//! two extension tables, `[server]` (the shell's limits) and `[billing]`
//! (the plan price table). `docs/configuration.md` is the reference.
//!
//! Everything is checked before the server starts: unknown keys, wrong types,
//! bad durations, and the semantic rules (unique ids, numbers and tokens, one
//! owner per account, users that exist, ...). The first problem found is
//! returned as a [`ConfigError`] that prints as `<file>:<line>: <what>`.
//!
//! Tokens never leave this module in clear: [`Config`] keeps only their
//! SHA-256 hashes ([`hash_token`]).

use crate::core::ids::{AccountId, GatewayName, NumberId, UserId, is_e164};
use crate::core::settings::{Overflow, QueueSettings, RoutingSettings};
use crate::core::team::{Plan, Role};
use crate::core::time::duration_str;
use crate::core::{Actor, AdminCommand, Input, NumberSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Where `ringline serve` looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/ringline.toml";
/// `listen` when the file does not name one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8040";
/// `data_dir` when the file does not name one.
pub const DEFAULT_DATA_DIR: &str = "data";
/// Longest account id, user id or gateway name (the core's limit for names).
pub const MAX_ID_CHARS: usize = crate::core::admin::MAX_NAME_CHARS;
/// Longest email address.
pub const MAX_EMAIL_CHARS: usize = crate::core::admin::MAX_EMAIL_CHARS;

/// A config file that cannot be used. Prints as `<file>:<line>: <message>`,
/// or `<file>: <message>` when no line applies (the file cannot be read).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line of the offending entry.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Lowercase hex SHA-256 of a token: what [`Config`], the journal and the
/// authentication check compare. The clear token is never stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A validated config file.
#[derive(Clone, PartialEq, Debug)]
pub struct Config {
    /// The file it was read from (as given, for messages).
    pub path: PathBuf,
    pub listen: SocketAddr,
    /// As written; a relative path is relative to the working directory of
    /// the server process, not to the config file.
    pub data_dir: PathBuf,
    pub gateways: Vec<GatewayConfig>,
    pub accounts: Vec<AccountConfig>,
    pub server: ServerSettings,
    pub billing: Billing,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GatewayConfig {
    pub name: GatewayName,
    /// [`hash_token`] of the configured token.
    pub token_hash: String,
    /// The accounts this gateway may act for; `None` means all of them.
    pub accounts: Option<Vec<AccountId>>,
}

impl GatewayConfig {
    /// Whether this gateway may deliver events for (and receive commands of)
    /// `account`.
    pub fn allows(&self, account: &AccountId) -> bool {
        self.accounts.as_ref().is_none_or(|list| list.contains(account))
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccountConfig {
    pub id: AccountId,
    pub plan: Plan,
    pub users: Vec<UserConfig>,
    pub numbers: Vec<NumberConfig>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UserConfig {
    pub id: UserId,
    pub email: String,
    pub role: Role,
    /// [`hash_token`] of the user's token; `None` when the file gives none
    /// (the user then cannot log in with a config token).
    pub token_hash: Option<String>,
    /// Line of the token in the file, for start-up errors about it.
    pub token_line: Option<usize>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NumberConfig {
    pub number: NumberId,
    pub spec: NumberSpec,
    /// Line of `number = ...` in the file, for start-up errors about it.
    pub line: usize,
}

/// How the server writes its log.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One readable line per event, for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[server]`: limits and housekeeping of the network shell. Every key is
/// optional.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest WebSocket message accepted, in bytes; a bigger one gets an
    /// `error bad_request` reply.
    pub max_frame_bytes: usize,
    /// Messages buffered towards one connection; a peer that falls this far
    /// behind is disconnected rather than slowing everyone down.
    pub outbound_queue: usize,
    /// Sustained messages per second accepted from one connection.
    pub rate_limit_per_sec: u32,
    /// Messages one connection may send in a burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// Error replies (bad frames, rate limiting) within
    /// [`ServerSettings::ABUSE_WINDOW`] after which the connection is closed;
    /// 0 never closes.
    pub abuse_errors_before_close: u32,
    /// How often the server pings each WebSocket peer.
    #[serde(with = "duration_str")]
    pub ping_interval: Duration,
    /// No frame at all from a peer for this long means it is dead.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Softphone connections one user may hold open at once (desktop,
    /// browser tabs, phone); one more is refused with 429.
    pub max_connections_per_user: usize,
    /// Clients' events and commands that may wait for one shard; past it
    /// they are refused with `unavailable` (a gateway sends them again).
    pub shard_queue: usize,
    /// Engine shards (worker threads), each owning a share of the accounts.
    pub shards: usize,
    /// Journal entries written between two snapshots.
    pub snapshot_every: u64,
    /// Whether a graceful stop writes a last snapshot (so the next start
    /// replays nothing).
    pub snapshot_on_stop: bool,
    /// How long call, message and voicemail history is kept.
    #[serde(with = "duration_str")]
    pub history_retention: Duration,
    pub log_format: LogFormat,
    /// Whether the server moves its machine code onto 2 MiB pages at
    /// start-up (`src/huge_pages.rs`); off for profiling with `perf`.
    pub huge_code_pages: bool,
    /// Journal batches that may be syncing at once (`store/writer.rs`): 2
    /// overlaps syncs under load; 1 syncs each batch before the next
    /// commit, the shortest path for a lone event.
    pub journal_sync_lanes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_frame_bytes: 65_536,
            outbound_queue: 256,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            abuse_errors_before_close: 20,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_connections_per_user: 10,
            shard_queue: 65_536,
            shards: 2,
            snapshot_every: 100_000,
            snapshot_on_stop: true,
            history_retention: Duration::from_secs(365 * 86_400),
            log_format: LogFormat::Human,
            huge_code_pages: true,
            journal_sync_lanes: 2,
        }
    }
}

impl ServerSettings {
    /// The window `abuse_errors_before_close` counts errors in.
    pub const ABUSE_WINDOW: Duration = Duration::from_secs(60);
    /// Room in a connection's queue for messages it did not ask for
    /// (offers, status, inbox) on top of replies to a full burst.
    pub const QUEUE_HEADROOM: usize = 32;
    pub const MIN_FRAME_BYTES: usize = 1024;
    pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    pub const MAX_OUTBOUND_QUEUE: usize = 65_536;
    pub const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);
    pub const MAX_SHARDS: usize = 64;
    pub const MAX_CONNECTIONS_PER_USER: usize = 1000;
    pub const MAX_SHARD_QUEUE: usize = 16 * 1024 * 1024;
    pub const MAX_JOURNAL_SYNC_LANES: usize = 8;

    /// Checks the limits; the error names the key (`server.<key> ...`).
    pub fn validate(&self) -> Result<(), String> {
        if !(Self::MIN_FRAME_BYTES..=Self::MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            return Err(format!(
                "server.max_frame_bytes must be between {} and {}",
                Self::MIN_FRAME_BYTES,
                Self::MAX_FRAME_BYTES
            ));
        }
        if !(1..=Self::MAX_OUTBOUND_QUEUE).contains(&self.outbound_queue) {
            return Err(format!("server.outbound_queue must be between 1 and {}", Self::MAX_OUTBOUND_QUEUE));
        }
        if self.rate_limit_per_sec == 0 {
            return Err("server.rate_limit_per_sec must be at least 1".into());
        }
        if self.rate_limit_burst == 0 {
            return Err("server.rate_limit_burst must be at least 1".into());
        }
        // A client may send a whole burst at once; the replies must fit in
        // its queue, or a well-behaved client would be cut off as slow.
        if self.outbound_queue < self.rate_limit_burst as usize + Self::QUEUE_HEADROOM {
            return Err(format!(
                "server.outbound_queue ({}) must be at least server.rate_limit_burst ({}) + {}",
                self.outbound_queue,
                self.rate_limit_burst,
                Self::QUEUE_HEADROOM
            ));
        }
        if self.ping_interval < Self::MIN_PING_INTERVAL {
            return Err("server.ping_interval must be at least 100ms".into());
        }
        if self.idle_timeout <= self.ping_interval {
            return Err("server.idle_timeout must be longer than server.ping_interval".into());
        }
        if !(1..=Self::MAX_CONNECTIONS_PER_USER).contains(&self.max_connections_per_user) {
            return Err(format!(
                "server.max_connections_per_user must be between 1 and {}",
                Self::MAX_CONNECTIONS_PER_USER
            ));
        }
        if !(1..=Self::MAX_SHARD_QUEUE).contains(&self.shard_queue) {
            return Err(format!("server.shard_queue must be between 1 and {}", Self::MAX_SHARD_QUEUE));
        }
        if !(1..=Self::MAX_SHARDS).contains(&self.shards) {
            return Err(format!("server.shards must be between 1 and {}", Self::MAX_SHARDS));
        }
        if !(1..=Self::MAX_JOURNAL_SYNC_LANES).contains(&self.journal_sync_lanes) {
            return Err(format!("server.journal_sync_lanes must be between 1 and {}", Self::MAX_JOURNAL_SYNC_LANES));
        }
        if self.snapshot_every == 0 {
            return Err("server.snapshot_every must be at least 1".into());
        }
        if self.history_retention.is_zero() {
            return Err("server.history_retention must be more than 0".into());
        }
        Ok(())
    }
}

/// `[billing]`: the plan price table. Prices are monthly, per seat, in
/// integer cents.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Billing {
    pub essentials: u64,
    pub team: u64,
    pub pro: u64,
    /// Seats charged at least, on every plan.
    pub min_seats: u32,
    /// Most seats an `essentials` account may have.
    pub essentials_max_seats: u32,
    /// Length of a billing cycle, for prorating seats added mid-cycle.
    pub cycle_days: u32,
}

impl Default for Billing {
    fn default() -> Self {
        Billing { essentials: 1500, team: 2900, pro: 4900, min_seats: 2, essentials_max_seats: 5, cycle_days: 30 }
    }
}

impl Billing {
    pub const MAX_CYCLE_DAYS: u32 = 366;

    /// Monthly price of one seat on `plan`, in cents.
    pub fn seat_price_cents(&self, plan: Plan) -> u64 {
        match plan {
            Plan::Essentials => self.essentials,
            Plan::Team => self.team,
            Plan::Pro => self.pro,
        }
    }

    /// Most seats `plan` allows; `None` is unlimited.
    pub fn max_seats(&self, plan: Plan) -> Option<u32> {
        match plan {
            Plan::Essentials => Some(self.essentials_max_seats),
            Plan::Team | Plan::Pro => None,
        }
    }

    /// Checks the table; the error names the key (`billing.<key> ...`).
    pub fn validate(&self) -> Result<(), String> {
        if self.min_seats == 0 {
            return Err("billing.min_seats must be at least 1".into());
        }
        if self.essentials_max_seats < self.min_seats {
            return Err("billing.essentials_max_seats must be at least billing.min_seats".into());
        }
        if !(1..=Self::MAX_CYCLE_DAYS).contains(&self.cycle_days) {
            return Err(format!("billing.cycle_days must be between 1 and {}", Self::MAX_CYCLE_DAYS));
        }
        Ok(())
    }
}

impl Config {
    /// The admin inputs that make the engine match the file: per account in
    /// file order, its plan, the `[billing]` price table, then each user,
    /// then each number. Every command is an upsert (created when missing,
    /// updated when present), so applying them at every start is safe; what
    /// was created at run time and is not in the file is left alone, and
    /// what the admin API changed wins (see `core::admin`).
    pub fn provisioning(&self) -> Vec<Input> {
        let mut out = Vec::new();
        for account in &self.accounts {
            let admin = |cmd| Input::Admin { account: account.id.clone(), actor: Actor::System, cmd: Box::new(cmd) };
            out.push(admin(AdminCommand::SetPlan { plan: account.plan }));
            out.push(admin(AdminCommand::SetPrices { prices: self.billing.clone() }));
            for user in &account.users {
                out.push(admin(AdminCommand::UpsertUser {
                    user: user.id.clone(),
                    email: user.email.clone(),
                    role: user.role,
                    token_hash: user.token_hash.clone(),
                }));
            }
            for number in &account.numbers {
                out.push(admin(AdminCommand::UpsertNumber {
                    number: number.number.clone(),
                    spec: number.spec.clone(),
                }));
            }
        }
        out
    }

    pub fn account(&self, id: &AccountId) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| &a.id == id)
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` is only used in messages and
/// kept in [`Config::path`].
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let lines = LineIndex::new(text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: e.span().map(|s| lines.line(s.start)),
        message: e.message().trim().to_string(),
    })?;
    Checker { text, path, lines }.check(raw)
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    gateways: Vec<RawGateway>,
    #[serde(default)]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    server: ServerSettings,
    #[serde(default)]
    billing: Billing,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: Spanned<String>,
    token: Spanned<String>,
    accounts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    id: Spanned<String>,
    plan: Spanned<Plan>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    numbers: Vec<RawNumber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    id: Spanned<String>,
    email: Spanned<String>,
    role: Spanned<Role>,
    token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNumber {
    number: Spanned<String>,
    name: Spanned<String>,
    #[serde(default)]
    assigned: Vec<Spanned<String>>,
    #[serde(default)]
    caller_id: Vec<Spanned<String>>,
    #[serde(default)]
    routing: RoutingSettings,
    #[serde(default)]
    queue: QueueSettings,
}

// ---------------------------------------------------------------------------
// Validation.

/// A step into the document: a table key or an array index.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Who already holds a token, for the uniqueness message.
struct TokenOwner {
    what: String,
    line: usize,
}

/// Where each line starts, so turning a span into a line number is a
/// binary search: the checker asks for a line for every user, token and
/// number, and counting newlines from the top each time made loading a
/// 10,000-user file take seconds.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex { newlines: text.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i).collect() }
    }

    /// 1-based line of byte offset `at`: one more than the newlines
    /// before it (an offset past the end is on the last line).
    fn line(&self, at: usize) -> usize {
        1 + self.newlines.partition_point(|&nl| nl < at)
    }
}

struct Checker<'t> {
    text: &'t str,
    path: &'t Path,
    lines: LineIndex,
}

impl Checker<'_> {
    fn line<T>(&self, s: &Spanned<T>) -> usize {
        self.lines.line(s.span().start)
    }

    fn err(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError { path: self.path.to_path_buf(), line: Some(line), message: message.into() }
    }

    fn at<T>(&self, s: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.err(self.line(s), message)
    }

    /// Line of the deepest part of `path` present in the document (the
    /// key's line for a key, the element's line for an array index) and
    /// whether all of `path` was found. Used for values inside the core's
    /// settings structs, which carry no spans themselves. Only called on the
    /// error path, so parsing the text again costs nothing in the good case.
    fn walk(&self, path: &[Seg<'_>]) -> (Option<usize>, bool) {
        let Ok(root) = toml::de::DeTable::parse(self.text) else { return (None, false) };
        let mut found: Option<Range<usize>> = None;
        let mut here: Option<&toml::de::DeValue<'_>> = None;
        let mut complete = true;
        for seg in path {
            let Some((span, value)) = step(root.get_ref(), here, *seg) else {
                complete = false;
                break;
            };
            found = Some(span);
            here = Some(value.get_ref());
        }
        (found.map(|s| self.lines.line(s.start)), complete)
    }

    fn locate(&self, path: &[Seg<'_>]) -> Option<usize> {
        self.walk(path).0
    }

    /// Like [`Checker::locate`], but only when the whole path is present.
    fn locate_exact(&self, path: &[Seg<'_>]) -> Option<usize> {
        match self.walk(path) {
            (line, true) => line,
            (_, false) => None,
        }
    }

    fn check_id(&self, what: &str, id: &Spanned<String>) -> Result<(), ConfigError> {
        let s = id.get_ref();
        if s.is_empty() || s.chars().count() > MAX_ID_CHARS {
            return Err(self.at(id, format!("{what} {s:?} must be 1 to {MAX_ID_CHARS} characters")));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
            return Err(self.at(id, format!("{what} {s:?} must not contain spaces, control characters or '/'")));
        }
        Ok(())
    }

    fn check_token(&self, what: &str, token: &Spanned<String>) -> Result<(), ConfigError> {
        let t = token.get_ref();
        if t.is_empty() {
            return Err(self.at(token, format!("{what}: token is empty")));
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.at(token, format!("{what}: token must not contain spaces or control characters")));
        }
        Ok(())
    }

    fn check(self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = match &raw.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 8040)),
            Some(s) => s.get_ref().trim().parse::<SocketAddr>().map_err(|_| {
                self.at(s, format!("listen {:?} is not a socket address (use e.g. \"{DEFAULT_LISTEN}\")", s.get_ref()))
            })?,
        };
        let data_dir = match &raw.data_dir {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some(s) if s.get_ref().trim().is_empty() => return Err(self.at(s, "data_dir is empty")),
            Some(s) => PathBuf::from(s.get_ref()),
        };
        raw.server.validate().map_err(|m| self.settings_error("server", &[], "", m))?;
        raw.billing.validate().map_err(|m| self.settings_error("billing", &[], "", m))?;

        let mut tokens: BTreeMap<String, TokenOwner> = BTreeMap::new();
        let gateways = self.check_gateways(&raw.gateways, &mut tokens)?;
        let mut numbers_seen: BTreeMap<String, (String, usize)> = BTreeMap::new();
        let mut account_lines: BTreeMap<String, usize> = BTreeMap::new();
        let mut accounts = Vec::with_capacity(raw.accounts.len());
        for (ai, acc) in raw.accounts.iter().enumerate() {
            self.check_id("account id", &acc.id)?;
            if let Some(first) = account_lines.get(acc.id.get_ref()) {
                return Err(self.at(
                    &acc.id,
                    format!("duplicate account id {:?} (first defined on line {first})", acc.id.get_ref()),
                ));
            }
            account_lines.insert(acc.id.get_ref().clone(), self.line(&acc.id));
            accounts.push(self.check_account(ai, acc, &raw.billing, &mut tokens, &mut numbers_seen)?);
        }
        // Gateways come first in the file but may name any account.
        for gw in &raw.gateways {
            for a in gw.accounts.iter().flat_map(|l| l.get_ref()) {
                if !account_lines.contains_key(a.get_ref()) {
                    return Err(self.at(
                        a,
                        format!("gateway {:?}: accounts names unknown account {:?}", gw.name.get_ref(), a.get_ref()),
                    ));
                }
            }
        }
        self.check_forward_loops(&raw.accounts, &accounts)?;
        Ok(Config {
            path: self.path.to_path_buf(),
            listen,
            data_dir,
            gateways,
            accounts,
            server: raw.server,
            billing: raw.billing,
        })
    }

    /// A settings struct's `validate` message names keys as `<table>.<key>`;
    /// point at the first of them present under `prefix`, else at the table.
    /// `context` goes in front of the message.
    fn settings_error(&self, table: &str, prefix: &[Seg<'_>], context: &str, message: String) -> ConfigError {
        let mut table_path = prefix.to_vec();
        table_path.push(Seg::Key(table));
        let keys = message
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .filter_map(|w| w.strip_prefix(table)?.strip_prefix('.'));
        let line = keys
            .filter_map(|key| {
                let mut path = table_path.clone();
                path.push(Seg::Key(key));
                self.locate_exact(&path)
            })
            .next()
            .or_else(|| self.locate(&table_path))
            .unwrap_or(1);
        self.err(line, format!("{context}{message}"))
    }

    fn check_gateways(
        &self,
        raw: &[RawGateway],
        tokens: &mut BTreeMap<String, TokenOwner>,
    ) -> Result<Vec<GatewayConfig>, ConfigError> {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for gw in raw {
            let name = gw.name.get_ref();
            self.check_id("gateway name", &gw.name)?;
            if let Some(first) = names.get(name.as_str()) {
                return Err(
                    self.at(&gw.name, format!("duplicate gateway name {name:?} (first defined on line {first})"))
                );
            }
            names.insert(name, self.line(&gw.name));
            let what = format!("gateway {name:?}");
            self.check_token(&what, &gw.token)?;
            if let Some(other) = tokens.get(gw.token.get_ref()) {
                return Err(self
                    .at(&gw.token, format!("{what}: token is already used by {} on line {}", other.what, other.line)));
            }
            tokens.insert(gw.token.get_ref().clone(), TokenOwner { what, line: self.line(&gw.token) });
            let accounts = match &gw.accounts {
                None => None,
                Some(list) if list.get_ref().is_empty() => {
                    return Err(self.at(
                        list,
                        format!("gateway {name:?}: accounts is empty (leave it out to allow every account)"),
                    ));
                }
                Some(list) => {
                    let mut ids: Vec<AccountId> = Vec::with_capacity(list.get_ref().len());
                    for a in list.get_ref() {
                        let id = AccountId::from(a.get_ref().as_str());
                        if ids.contains(&id) {
                            return Err(
                                self.at(a, format!("gateway {name:?}: account {:?} is listed twice", a.get_ref()))
                            );
                        }
                        ids.push(id);
                    }
                    Some(ids)
                }
            };
            out.push(GatewayConfig {
                name: GatewayName::from(name.as_str()),
                token_hash: hash_token(gw.token.get_ref()),
                accounts,
            });
        }
        Ok(out)
    }

    fn check_account(
        &self,
        ai: usize,
        acc: &RawAccount,
        billing: &Billing,
        tokens: &mut BTreeMap<String, TokenOwner>,
        numbers_seen: &mut BTreeMap<String, (String, usize)>,
    ) -> Result<AccountConfig, ConfigError> {
        let account = acc.id.get_ref();
        let plan = *acc.plan.get_ref();
        let mut user_lines: BTreeMap<&str, usize> = BTreeMap::new();
        let mut owner: Option<&RawUser> = None;
        let mut users = Vec::with_capacity(acc.users.len());
        for u in &acc.users {
            let id = u.id.get_ref();
            self.check_id("user id", &u.id)?;
            if let Some(first) = user_lines.get(id.as_str()) {
                return Err(self.at(
                    &u.id,
                    format!("duplicate user id {id:?} in account {account:?} (first defined on line {first})"),
                ));
            }
            user_lines.insert(id, self.line(&u.id));
            if let Some(max) = billing.max_seats(plan)
                && users.len() >= max as usize
            {
                return Err(self.at(
                    &u.id,
                    format!(
                        "account {account:?} is on plan {:?}, which allows at most {max} users; user {id:?} is one too many",
                        plan_str(plan)
                    ),
                ));
            }
            let email = u.email.get_ref().as_str();
            if !looks_like_email(email) {
                return Err(self.at(
                    &u.email,
                    format!("user {id:?}: email {:?} does not look like an email address", u.email.get_ref()),
                ));
            }
            let role = *u.role.get_ref();
            match role {
                Role::Owner => {
                    if let Some(first) = owner {
                        return Err(self.at(
                            &u.role,
                            format!(
                                "account {account:?} has two owners, {:?} (line {}) and {id:?}; exactly one user must have role \"owner\"",
                                first.id.get_ref(),
                                self.line(&first.role)
                            ),
                        ));
                    }
                    owner = Some(u);
                }
                Role::Supervisor if !plan.has_supervisors() => {
                    return Err(self.at(
                        &u.role,
                        format!(
                            "user {id:?}: the supervisor role needs plan \"pro\" (account {account:?} is on plan {:?})",
                            plan_str(plan)
                        ),
                    ));
                }
                _ => {}
            }
            let token_line = u.token.as_ref().map(|t| self.line(t));
            let token_hash = match &u.token {
                None => None,
                Some(t) => {
                    let what = format!("user {id:?} of account {account:?}");
                    self.check_token(&what, t)?;
                    if let Some(other) = tokens.get(t.get_ref()) {
                        return Err(self
                            .at(t, format!("{what}: token is already used by {} on line {}", other.what, other.line)));
                    }
                    tokens.insert(t.get_ref().clone(), TokenOwner { what, line: self.line(t) });
                    Some(hash_token(t.get_ref()))
                }
            };
            users.push(UserConfig {
                id: UserId::from(id.as_str()),
                email: email.to_string(),
                role,
                token_hash,
                token_line,
            });
        }
        if owner.is_none() {
            return Err(self
                .at(&acc.id, format!("account {account:?} has no owner; exactly one user must have role \"owner\"")));
        }

        let mut numbers = Vec::with_capacity(acc.numbers.len());
        for (ni, n) in acc.numbers.iter().enumerate() {
            let number = n.number.get_ref();
            if !is_e164(number) {
                return Err(self.at(&n.number, format!("number {number:?} is not E.164 (write it like \"+15550100\")")));
            }
            if let Some((other, line)) = numbers_seen.get(number) {
                return Err(self.at(
                    &n.number,
                    format!("number {number:?} is already defined in account {other:?} on line {line}"),
                ));
            }
            numbers_seen.insert(number.clone(), (account.clone(), self.line(&n.number)));
            let name = n.name.get_ref();
            if name.trim().is_empty() || name.chars().count() > MAX_ID_CHARS {
                return Err(self.at(&n.name, format!("number {number:?}: name must be 1 to {MAX_ID_CHARS} characters")));
            }
            let assigned = self.user_list(account, number, "assigned", &n.assigned, &user_lines)?;
            let caller_id = self.user_list(account, number, "caller_id", &n.caller_id, &user_lines)?;
            if let Some(both) = n.caller_id.iter().find(|c| assigned.iter().any(|a| a.as_str() == c.get_ref())) {
                return Err(self.at(
                    both,
                    format!(
                        "number {number:?}: user {:?} is in both assigned and caller_id (assigned already allows calling out)",
                        both.get_ref()
                    ),
                ));
            }
            let here = [Seg::Key("accounts"), Seg::Index(ai), Seg::Key("numbers"), Seg::Index(ni)];
            if let Some(targets) = &n.routing.targets {
                let mut seen: Vec<&UserId> = Vec::with_capacity(targets.len());
                for (ti, t) in targets.iter().enumerate() {
                    let line = || {
                        let mut p = here.to_vec();
                        p.extend([Seg::Key("routing"), Seg::Key("targets"), Seg::Index(ti)]);
                        self.locate(&p).unwrap_or_else(|| self.line(&n.number))
                    };
                    if !user_lines.contains_key(t.as_str()) {
                        return Err(self.err(
                            line(),
                            format!("number {number:?}: routing.targets names {t:?}, who is not a user of account {account:?}"),
                        ));
                    }
                    if seen.contains(&t) {
                        return Err(self.err(line(), format!("number {number:?}: routing.targets lists {t:?} twice")));
                    }
                    seen.push(t);
                }
            }
            let context = format!("number {number:?}: ");
            n.routing.validate().map_err(|m| self.settings_error("routing", &here, &context, m))?;
            n.queue.validate().map_err(|m| self.settings_error("queue", &here, &context, m))?;
            if let Overflow::Forward(to) = &n.queue.overflow
                && to.as_str() == number
            {
                let mut p = here.to_vec();
                p.extend([Seg::Key("queue"), Seg::Key("overflow")]);
                let line = self.locate(&p).unwrap_or_else(|| self.line(&n.number));
                return Err(self.err(line, format!("number {number:?}: queue.overflow forwards to the number itself")));
            }
            numbers.push(NumberConfig {
                number: NumberId::from(number.as_str()),
                spec: NumberSpec {
                    name: name.clone(),
                    assigned,
                    caller_id,
                    routing: n.routing.clone(),
                    queue: n.queue.clone(),
                },
                line: self.line(&n.number),
            });
        }
        Ok(AccountConfig { id: AccountId::from(account.as_str()), plan, users, numbers })
    }

    /// Checks an `assigned` or `caller_id` list: known users, no repeats.
    fn user_list(
        &self,
        account: &str,
        number: &str,
        key: &str,
        list: &[Spanned<String>],
        users: &BTreeMap<&str, usize>,
    ) -> Result<Vec<UserId>, ConfigError> {
        let mut out: Vec<UserId> = Vec::with_capacity(list.len());
        for u in list {
            let id = u.get_ref();
            if !users.contains_key(id.as_str()) {
                return Err(self.at(
                    u,
                    format!("number {number:?}: {key} names {id:?}, who is not a user of account {account:?}"),
                ));
            }
            if out.iter().any(|x| x.as_str() == id) {
                return Err(self.at(u, format!("number {number:?}: {key} lists {id:?} twice")));
            }
            out.push(UserId::from(id.as_str()));
        }
        Ok(out)
    }

    /// Overflow forwards between our own numbers must not form a loop, or a
    /// call nobody can take would bounce between them for ever.
    fn check_forward_loops(&self, raw: &[RawAccount], accounts: &[AccountConfig]) -> Result<(), ConfigError> {
        let mut next: BTreeMap<&str, &str> = BTreeMap::new();
        let mut line: BTreeMap<&str, usize> = BTreeMap::new();
        for (acc, raw_acc) in accounts.iter().zip(raw) {
            for (n, raw_n) in acc.numbers.iter().zip(&raw_acc.numbers) {
                line.insert(n.number.as_str(), self.line(&raw_n.number));
                if let Overflow::Forward(to) = &n.spec.queue.overflow {
                    next.insert(n.number.as_str(), to.as_str());
                }
            }
        }
        for &start in next.keys() {
            let mut path = vec![start];
            let mut at = start;
            while let Some(&to) = next.get(at) {
                if to == start {
                    path.push(to);
                    let l = line.get(start).copied().unwrap_or(1);
                    return Err(self.err(l, format!("queue.overflow forwards in a loop: {}", path.join(" -> "))));
                }
                if path.contains(&to) {
                    break; // a loop that does not include `start`; found from its own start
                }
                path.push(to);
                at = to;
            }
        }
        Ok(())
    }
}

/// One step of a path into the parsed document: the span to report (the
/// key for a table entry, the element for an array index) and the value.
fn step<'a, 'i>(
    root: &'a toml::de::DeTable<'i>,
    here: Option<&'a toml::de::DeValue<'i>>,
    seg: Seg<'_>,
) -> Option<(Range<usize>, &'a Spanned<toml::de::DeValue<'i>>)> {
    let table = match here {
        None => Some(root),
        Some(toml::de::DeValue::Table(t)) => Some(t),
        Some(_) => None,
    };
    match (seg, table, here) {
        (Seg::Key(k), Some(t), _) => t.iter().find(|(key, _)| key.get_ref() == k).map(|(key, v)| (key.span(), v)),
        (Seg::Index(i), _, Some(toml::de::DeValue::Array(a))) => a.get(i).map(|v| (v.span(), v)),
        _ => None,
    }
}

fn plan_str(plan: Plan) -> &'static str {
    match plan {
        Plan::Essentials => "essentials",
        Plan::Team => "team",
        Plan::Pro => "pro",
    }
}

/// The email shape the config file accepts (the admin API may reuse it):
/// `local@domain.tld`: one `@`, no spaces, a non-empty local part, a domain
/// of non-empty dot-separated labels with at least one dot.
pub fn looks_like_email(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_EMAIL_CHARS || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty() && !domain.contains('@') && domain.contains('.') && domain.split('.').all(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::Strategy;

    /// 1-based line of byte offset `at`, counted the slow way.
    fn line_of(text: &str, at: usize) -> usize {
        let at = at.min(text.len());
        1 + text.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count()
    }

    #[test]
    fn the_line_index_counts_lines_like_counting_newlines() {
        for text in ["", "\n", "a", "a\nb", "a\n\nb\n", "\n\nx\ny\n\n"] {
            let index = LineIndex::new(text);
            for at in 0..text.len() + 3 {
                assert_eq!(index.line(at), line_of(text, at), "{text:?} at {at}");
            }
        }
    }

    /// Error lines far down a large file are still right (each user's
    /// line comes from the index, not a count from the top).
    #[test]
    fn an_error_deep_in_a_large_file_names_its_line() {
        let mut text = String::from("[[accounts]]\nid = \"big\"\nplan = \"pro\"\n");
        for i in 0..2000 {
            let role = if i == 0 { "owner" } else { "agent" };
            text.push_str(&format!(
                "\n[[accounts.users]]\nid = \"u{i}\"\nemail = \"u{i}@x.test\"\nrole = \"{role}\"\ntoken = \"t{i}\"\n"
            ));
        }
        text.push_str(
            "\n[[accounts.users]]\nid = \"late\"\nemail = \"late@x.test\"\nrole = \"agent\"\ntoken = \"t17\"\n",
        );
        let e = parse(&text, Path::new("big.toml")).unwrap_err();
        let last = text.lines().count();
        assert_eq!(e.line, Some(last), "{e}");
        // Three header lines, then six per user; u17's token is its block's last.
        assert!(e.message.contains(&format!("on line {}", 3 + 6 * 17 + 6)), "{e}");
    }

    /// The example of `shared/PROTOCOL.md`, "Running the server", verbatim.
    const PROTOCOL_EXAMPLE: &str = r#"listen = "127.0.0.1:8040"
data_dir = "data"

[[gateways]]
name = "edge-1"
token = "gw-secret"            # accounts = ["acme"] limits it; default all

[[accounts]]
id = "acme"
plan = "team"                  # essentials | team | pro

[[accounts.users]]
id = "alice"
email = "alice@acme.test"
role = "owner"                 # owner | admin | supervisor | agent
token = "alice-token"          # stored hashed

[[accounts.numbers]]
number = "+15550100"
name = "Support"
assigned = ["alice", "bob"]    # see history and inbox; ring by default
caller_id = ["carol"]          # outbound-only: may call from it, sees nothing

[accounts.numbers.routing]
strategy = "round_robin"       # ring_all | ring_in_order | round_robin | longest_idle
ring_timeout = "15s"
wrap_up = "0s"
targets = ["alice", "bob"]     # default: assigned, in this order
auto_away_after_missed = 0     # 0 = never

[accounts.numbers.queue]
enabled = true
max_waiting = 50
max_wait = "10m"
announce_position = true
announce_every = "30s"
callback = true
callback_attempts = 3
callback_retry_after = "5m"
overflow = "voicemail"         # voicemail | hangup | forward:+15550199
"#;

    /// The two users the example refers to but does not define.
    const PROTOCOL_EXAMPLE_USERS: &str = r#"
[[accounts.users]]
id = "bob"
email = "bob@acme.test"
role = "agent"
token = "bob-token"

[[accounts.users]]
id = "carol"
email = "carol@acme.test"
role = "agent"
"#;

    /// A small valid file the error tests change one line of.
    const BASE: &str = r#"listen = "127.0.0.1:0"
data_dir = "data"

[[gateways]]
name = "gw"
token = "gw-token"

[[accounts]]
id = "acme"
plan = "team"

[[accounts.users]]
id = "alice"
email = "alice@acme.test"
role = "owner"
token = "alice-token"

[[accounts.users]]
id = "bob"
email = "bob@acme.test"
role = "agent"
token = "bob-token"

[[accounts.numbers]]
number = "+15550100"
name = "Support"
assigned = ["alice", "bob"]
caller_id = []

[accounts.numbers.routing]
strategy = "ring_in_order"
ring_timeout = "15s"
targets = ["bob", "alice"]

[accounts.numbers.queue]
max_wait = "10m"
overflow = "voicemail"

[[accounts]]
id = "globex"
plan = "pro"

[[accounts.users]]
id = "gina"
email = "gina@globex.test"
role = "owner"
token = "gina-token"

[[accounts.numbers]]
number = "+15550200"
name = "Front desk"
assigned = ["gina"]
"#;

    fn parse_ok(text: &str) -> Config {
        match parse(text, Path::new("test.toml")) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got {e}"),
        }
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text, Path::new("test.toml")) {
            Ok(_) => panic!("expected a config error"),
            Err(e) => e,
        }
    }

    /// 1-based line of the first line of `text` containing `needle`.
    fn line_with(text: &str, needle: &str) -> usize {
        let Some(i) = text.lines().position(|l| l.contains(needle)) else { panic!("{needle:?} is not in the text") };
        i + 1
    }

    /// Replaces `from` (which must occur) once.
    fn edit(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from:?} is not in the text");
        text.replacen(from, to, 1)
    }

    /// Asserts the error is on `line` and its message holds every needle.
    fn assert_error(text: &str, line: usize, needles: &[&str]) {
        let e = parse_err(text);
        assert_eq!(e.line, Some(line), "wrong line for: {e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("test.toml:{line}: ")), "{shown}");
        for n in needles {
            assert!(e.message.contains(n), "{n:?} missing from: {shown}");
        }
    }

    #[test]
    fn base_is_valid() {
        let c = parse_ok(BASE);
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(line_with(BASE, "listen ="), 1);
        assert_eq!(line_with(BASE, "targets ="), 33);
    }

    #[test]
    fn protocol_example_verbatim_is_refused_for_its_undefined_users() {
        // The example assigns "bob" and gives "carol" caller-id access but
        // defines neither; a reference to a user who does not exist is an
        // error (a typo must not silently leave a number unstaffed).
        let line = line_with(PROTOCOL_EXAMPLE, r#"assigned = ["alice", "bob"]"#);
        assert_eq!(line, 21);
        assert_error(PROTOCOL_EXAMPLE, line, &["\"bob\"", "assigned", "+15550100", "acme"]);
    }

    #[test]
    fn protocol_example_parses_and_provisions() {
        let text = format!("{PROTOCOL_EXAMPLE}{PROTOCOL_EXAMPLE_USERS}");
        let c = parse_ok(&text);
        assert_eq!(c.path, PathBuf::from("test.toml"));
        assert_eq!(c.listen, "127.0.0.1:8040".parse::<SocketAddr>().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(
            c.gateways,
            vec![GatewayConfig { name: "edge-1".into(), token_hash: hash_token("gw-secret"), accounts: None }]
        );
        assert!(c.gateways[0].allows(&"acme".into()));
        assert_eq!(c.server, ServerSettings::default());
        assert_eq!(c.billing, Billing::default());

        let acme: AccountId = "acme".into();
        let spec = NumberSpec {
            name: "Support".into(),
            assigned: vec!["alice".into(), "bob".into()],
            caller_id: vec!["carol".into()],
            routing: RoutingSettings {
                strategy: Strategy::RoundRobin,
                ring_timeout: Duration::from_secs(15),
                wrap_up: Duration::ZERO,
                targets: Some(vec!["alice".into(), "bob".into()]),
                auto_away_after_missed: 0,
            },
            queue: QueueSettings {
                enabled: true,
                max_waiting: 50,
                max_wait: Duration::from_secs(600),
                announce_position: true,
                announce_every: Duration::from_secs(30),
                announce_min_gap: Duration::from_secs(5),
                callback: true,
                callback_attempts: 3,
                callback_retry_after: Duration::from_secs(300),
                overflow: Overflow::Voicemail,
            },
        };
        let admin = |cmd| Input::Admin { account: acme.clone(), actor: Actor::System, cmd: Box::new(cmd) };
        let user = |id: &str, role, token: Option<&str>| {
            admin(AdminCommand::UpsertUser {
                user: id.into(),
                email: format!("{id}@acme.test"),
                role,
                token_hash: token.map(hash_token),
            })
        };
        let expected = vec![
            admin(AdminCommand::SetPlan { plan: Plan::Team }),
            admin(AdminCommand::SetPrices { prices: c.billing.clone() }),
            user("alice", Role::Owner, Some("alice-token")),
            user("bob", Role::Agent, Some("bob-token")),
            user("carol", Role::Agent, None),
            admin(AdminCommand::UpsertNumber { number: "+15550100".into(), spec }),
        ];
        assert_eq!(c.provisioning(), expected);
    }

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../config/ringline.toml");
        let c = match parse(text, Path::new(DEFAULT_PATH)) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.listen, "127.0.0.1:8040".parse::<SocketAddr>().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.gateways.len(), 1);
        assert_eq!(c.gateways[0].name.as_str(), "edge-1");
        assert_eq!(c.gateways[0].token_hash, hash_token("gw-secret"));
        let demo = &c.accounts[0];
        assert_eq!(demo.plan, Plan::Pro);
        let ids: Vec<&str> = demo.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["alice", "bob", "carol", "dave", "erin", "sam", "oscar"]);
        for u in &demo.users {
            assert_eq!(u.token_hash, Some(hash_token(&format!("{}-token", u.id))));
        }
        let role = |id: &str| demo.users.iter().find(|u| u.id.as_str() == id).map(|u| u.role);
        assert_eq!(role("alice"), Some(Role::Owner));
        assert_eq!(role("sam"), Some(Role::Supervisor));
        assert_eq!(role("oscar"), Some(Role::Agent));

        let strategies: Vec<(&str, &str, Strategy)> =
            demo.numbers.iter().map(|n| (n.number.as_str(), n.spec.name.as_str(), n.spec.routing.strategy)).collect();
        assert_eq!(
            strategies,
            [
                ("+15550100", "Support", Strategy::RingAll),
                ("+15550101", "Sales", Strategy::RingInOrder),
                ("+15550102", "Billing", Strategy::RoundRobin),
                ("+15550103", "Tech", Strategy::LongestIdle),
            ]
        );
        let support = &demo.numbers[0].spec;
        assert!(support.queue.callback && support.queue.announce_position);
        assert_eq!(support.caller_id, vec![UserId::from("oscar")]);
        assert!(demo.numbers.iter().all(|n| !n.spec.assigned.iter().any(|u| u.as_str() == "oscar")));
        assert_eq!(demo.numbers[1].spec.queue.overflow, Overflow::Forward("+15550199".into()));
        assert_eq!(demo.numbers[2].spec.routing.wrap_up, Duration::from_secs(10));
        // Agents share several numbers.
        let on = |id: &str| demo.numbers.iter().filter(|n| n.spec.assigned.iter().any(|u| u.as_str() == id)).count();
        assert!(on("bob") >= 2 && on("carol") >= 2 && on("dave") >= 2 && on("erin") >= 2);
        // The commented-out [server] and [billing] are the defaults.
        assert_eq!(c.server, ServerSettings::default());
        assert_eq!(c.billing, Billing::default());
        assert_eq!(c.provisioning().len(), 2 + 7 + 4);
    }

    #[test]
    fn shipped_config_loads_from_disk() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH);
        let c = load(&path).unwrap();
        assert_eq!(c.path, path);
        let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/no-such-file.toml");
        let e = load(&missing).unwrap_err();
        assert_eq!(e.line, None);
        assert!(e.to_string().starts_with(&format!("{}: cannot read", missing.display())), "{e}");
    }

    #[test]
    fn defaults_apply_when_optional_parts_are_absent() {
        let c = parse_ok("");
        assert_eq!(c.listen, DEFAULT_LISTEN.parse::<SocketAddr>().unwrap());
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.gateways.is_empty() && c.accounts.is_empty());
        assert!(c.provisioning().is_empty());

        let c = parse_ok(BASE);
        let s = &c.server;
        assert_eq!(s.max_frame_bytes, 65_536);
        assert_eq!(s.outbound_queue, 256);
        assert_eq!((s.rate_limit_per_sec, s.rate_limit_burst), (50, 100));
        assert_eq!(s.abuse_errors_before_close, 20);
        assert_eq!(s.ping_interval, Duration::from_secs(15));
        assert_eq!(s.idle_timeout, Duration::from_secs(45));
        assert_eq!(s.shards, 2);
        assert_eq!(s.snapshot_every, 100_000);
        assert!(s.snapshot_on_stop);
        assert_eq!(s.history_retention, Duration::from_secs(365 * 86_400));
        assert_eq!(s.log_format, LogFormat::Human);
        let b = &c.billing;
        assert_eq!((b.team, b.essentials, b.pro), (2900, 1500, 4900));
        assert_eq!((b.min_seats, b.essentials_max_seats, b.cycle_days), (2, 5, 30));
        assert_eq!(b.seat_price_cents(Plan::Pro), 4900);
        assert_eq!(b.max_seats(Plan::Essentials), Some(5));
        assert_eq!(b.max_seats(Plan::Team), None);

        // Number settings left out take the core's defaults.
        let front = &c.accounts[1].numbers[0].spec;
        assert_eq!(front.routing, RoutingSettings::default());
        assert_eq!(front.queue, QueueSettings::default());
        assert!(front.caller_id.is_empty());
        // Users are unique per account, not across accounts.
        parse_ok(&edit(&edit(BASE, r#"id = "gina""#, r#"id = "alice""#), r#"["gina"]"#, r#"["alice"]"#));
    }

    #[test]
    fn server_and_billing_tables_are_read() {
        let text = format!(
            "{BASE}\n[server]\nmax_frame_bytes = 4096\nshards = 8\nhistory_retention = \"90d\"\nlog_format = \"json\"\n\
             ping_interval = \"5s\"\nidle_timeout = \"20s\"\njournal_sync_lanes = 1\n\n[billing]\nteam = 3000\ncycle_days = 31\n"
        );
        let c = parse_ok(&text);
        assert_eq!(c.server.max_frame_bytes, 4096);
        assert_eq!(c.server.journal_sync_lanes, 1);
        assert_eq!(ServerSettings::default().journal_sync_lanes, 2);
        assert_eq!(c.server.shards, 8);
        assert_eq!(c.server.history_retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert_eq!(c.server.outbound_queue, 256);
        assert_eq!(c.billing.team, 3000);
        assert_eq!(c.billing.pro, 4900);
        assert_eq!(c.billing.cycle_days, 31);
    }

    #[test]
    fn hash_is_lowercase_hex_sha256() {
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let c = parse_ok(BASE);
        assert_eq!(c.accounts[0].users[0].token_hash, Some(hash_token("alice-token")));
        assert!(!format!("{c:?}").contains("alice-token"), "clear tokens must not be kept");
    }

    #[test]
    fn syntax_and_type_errors_carry_the_line() {
        assert_error(&edit(BASE, r#"name = "Support""#, r#"name = "Support"#), 26, &[]);
        assert_error(&edit(BASE, "data_dir", "data_dri"), 2, &["unknown field `data_dri`"]);
        assert_error(&edit(BASE, "ring_timeout", "ring_timout"), 32, &["unknown field `ring_timout`"]);
        assert_error(&edit(BASE, "max_wait", "max_waitt"), 36, &["unknown field `max_waitt`"]);
        assert_error(&edit(BASE, r#"email = "bob@acme.test""#, "emial = 1"), 20, &["unknown field `emial`"]);
        assert_error(&edit(BASE, r#""15s""#, r#""15 secs please""#), 32, &["invalid duration", "15 secs please"]);
        assert_error(&edit(BASE, r#"plan = "team""#, r#"plan = "gold""#), 10, &["gold"]);
        assert_error(&edit(BASE, r#"role = "agent""#, r#"role = "boss""#), 21, &["boss"]);
        assert_error(&edit(BASE, r#""ring_in_order""#, r#""fastest""#), 31, &["fastest"]);
        assert_error(&edit(BASE, r#"overflow = "voicemail""#, r#"overflow = "drop""#), 37, &["overflow", "drop"]);
        assert_error(&edit(BASE, r#"overflow = "voicemail""#, r#"overflow = "forward:555""#), 37, &["E.164"]);
        let text = format!("{BASE}\n[server]\nshards = -1\n");
        assert_error(&text, line_with(&text, "shards = -1"), &[]);
        let text = format!("{BASE}\n[server]\nlog_format = \"xml\"\n");
        assert_error(&text, line_with(&text, "xml"), &["xml"]);
        let missing = edit(BASE, "email = \"bob@acme.test\"\n", "");
        let e = parse_err(&missing);
        assert!(e.message.contains("missing field `email`"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn top_level_errors() {
        assert_error(&edit(BASE, "127.0.0.1:0", "localhost:8040"), 1, &["listen", "localhost:8040"]);
        assert_error(&edit(BASE, r#"data_dir = "data""#, r#"data_dir = """#), 2, &["data_dir"]);
        let text = format!("{BASE}\n[server]\nsnapshot_every = 10\nshards = 65\n");
        assert_error(&text, line_with(&text, "shards = 65"), &["server.shards", "between 1 and 64"]);
        let text = format!("{BASE}\n[server]\njournal_sync_lanes = 0\n");
        assert_error(&text, line_with(&text, "journal_sync_lanes"), &["server.journal_sync_lanes", "between 1 and 8"]);
        let text = format!("{BASE}\n[server]\njournal_sync_lanes = 9\n");
        assert_error(&text, line_with(&text, "journal_sync_lanes"), &["server.journal_sync_lanes"]);
        let text = format!("{BASE}\n[server]\nshards = 0\n");
        assert_error(&text, line_with(&text, "shards = 0"), &["server.shards"]);
        let text = format!("{BASE}\n[server]\nmax_connections_per_user = 0\n");
        assert_error(&text, line_with(&text, "max_connections_per_user"), &["server.max_connections_per_user"]);
        let text = format!("{BASE}\n[server]\nshard_queue = 0\n");
        assert_error(&text, line_with(&text, "shard_queue"), &["server.shard_queue"]);
        let text = format!("{BASE}\n[server]\nping_interval = \"1m\"\n");
        assert_error(&text, line_with(&text, "ping_interval"), &["server.idle_timeout"]);
        let text = format!("{BASE}\n[billing]\nmin_seats = 0\n");
        assert_error(&text, line_with(&text, "min_seats"), &["billing.min_seats"]);
    }

    #[test]
    fn gateway_errors() {
        assert_error(&edit(BASE, r#"token = "gw-token""#, r#"token = """#), 6, &["gateway \"gw\"", "empty"]);
        let text = edit(BASE, "token = \"gw-token\"\n", "token = \"gw-token\"\naccounts = [\"acme\", \"initech\"]\n");
        assert_error(&text, 7, &["gateway \"gw\"", "initech"]);
        let text = edit(BASE, "token = \"gw-token\"\n", "token = \"gw-token\"\naccounts = []\n");
        assert_error(&text, 7, &["gateway \"gw\"", "empty"]);
        let text = edit(BASE, "token = \"gw-token\"\n", "token = \"gw-token\"\naccounts = [\"globex\"]\n");
        let c = parse_ok(&text);
        assert!(c.gateways[0].allows(&"globex".into()) && !c.gateways[0].allows(&"acme".into()));
        let text = edit(BASE, "[[accounts]]", "[[gateways]]\nname = \"gw\"\ntoken = \"other\"\n\n[[accounts]]");
        assert_error(&text, line_with(&text, "token = \"other\"") - 1, &["duplicate gateway name \"gw\"", "line 5"]);
        let text = edit(BASE, "[[accounts]]", "[[gateways]]\nname = \"gw2\"\ntoken = \"gw-token\"\n\n[[accounts]]");
        assert_error(&text, line_with(&text, "name = \"gw2\"") + 1, &["gateway \"gw2\"", "already used", "line 6"]);
        let e = parse_err(&edit(BASE, r#"token = "gw-token""#, r#"token = "gw token""#));
        assert!(!e.to_string().contains("gw token"), "tokens are not echoed: {e}");
    }

    #[test]
    fn account_and_user_errors() {
        assert_error(
            &edit(BASE, r#"id = "globex""#, r#"id = "acme""#),
            40,
            &["duplicate account id \"acme\"", "line 9"],
        );
        assert_error(&edit(BASE, r#"id = "bob""#, r#"id = "alice""#), 19, &["duplicate user id \"alice\"", "acme"]);
        assert_error(&edit(BASE, r#"id = "bob""#, r#"id = "b o b""#), 19, &["user id", "b o b"]);
        assert_error(&edit(BASE, r#"id = "acme""#, r#"id = """#), 9, &["account id"]);
        // Owners: exactly one.
        assert_error(&edit(BASE, r#"role = "owner""#, r#"role = "admin""#), 9, &["\"acme\" has no owner"]);
        assert_error(
            &edit(BASE, r#"role = "agent""#, r#"role = "owner""#),
            21,
            &["\"acme\" has two owners", "\"alice\"", "\"bob\""],
        );
        // Supervisors are a Pro feature.
        assert_error(
            &edit(BASE, r#"role = "agent""#, r#"role = "supervisor""#),
            21,
            &["user \"bob\"", "supervisor", "\"pro\"", "\"team\""],
        );
        parse_ok(&edit(
            &edit(BASE, r#"plan = "team""#, r#"plan = "pro""#),
            r#"role = "agent""#,
            r#"role = "supervisor""#,
        ));
        // Emails.
        assert_error(&edit(BASE, "bob@acme.test", "bob at acme.test"), 20, &["user \"bob\"", "email"]);
        assert_error(&edit(BASE, "bob@acme.test", "bob@acme"), 20, &["bob@acme"]);
        assert_error(&edit(BASE, "bob@acme.test", "@acme.test"), 20, &["email"]);
        // Tokens: unique across the file, never a gateway's.
        assert_error(
            &edit(BASE, "gina-token", "alice-token"),
            47,
            &["user \"gina\" of account \"globex\"", "user \"alice\" of account \"acme\"", "line 16"],
        );
        assert_error(&edit(BASE, "bob-token", "gw-token"), 22, &["user \"bob\"", "gateway \"gw\"", "line 6"]);
        assert_error(&edit(BASE, r#"token = "bob-token""#, r#"token = """#), 22, &["user \"bob\"", "empty"]);
        // No token is fine.
        let c = parse_ok(&edit(BASE, "token = \"bob-token\"\n", ""));
        assert_eq!(c.accounts[0].users[1].token_hash, None);
        // Essentials seat limit.
        let text = format!(
            "{}\n[billing]\nmin_seats = 1\nessentials_max_seats = 1\n",
            edit(BASE, r#"plan = "team""#, r#"plan = "essentials""#)
        );
        assert_error(&text, 19, &["\"acme\"", "essentials", "at most 1", "\"bob\""]);
    }

    #[test]
    fn number_errors() {
        assert_error(&edit(BASE, r#""+15550100""#, r#""555-0100""#), 25, &["\"555-0100\"", "E.164"]);
        assert_error(
            &edit(BASE, r#""+15550200""#, r#""+15550100""#),
            50,
            &["number \"+15550100\"", "account \"acme\"", "line 25"],
        );
        assert_error(&edit(BASE, r#"name = "Support""#, r#"name = " ""#), 26, &["+15550100", "name"]);
        assert_error(
            &edit(BASE, r#"["alice", "bob"]"#, r#"["alice", "bobb"]"#),
            27,
            &["+15550100", "assigned", "\"bobb\""],
        );
        assert_error(&edit(BASE, r#"["alice", "bob"]"#, r#"["alice", "alice"]"#), 27, &["assigned", "twice"]);
        assert_error(&edit(BASE, r#"caller_id = []"#, r#"caller_id = ["zoe"]"#), 28, &["caller_id", "\"zoe\""]);
        assert_error(
            &edit(BASE, r#"caller_id = []"#, r#"caller_id = ["bob"]"#),
            28,
            &["\"bob\"", "both assigned and caller_id"],
        );
        // A user of another account is unknown here.
        assert_error(&edit(BASE, r#"caller_id = []"#, r#"caller_id = ["gina"]"#), 28, &["\"gina\"", "\"acme\""]);
        assert_error(&edit(BASE, r#"["bob", "alice"]"#, r#"["bob", "zed"]"#), 33, &["routing.targets", "\"zed\""]);
        let text = edit(BASE, r#"targets = ["bob", "alice"]"#, "targets = [\n  \"bob\",\n  \"zed\",\n]");
        assert_error(&text, 35, &["routing.targets", "\"zed\""]);
        assert_error(&edit(BASE, r#"["bob", "alice"]"#, r#"["bob", "bob"]"#), 33, &["routing.targets", "twice"]);
        // The core's own limits, pointed at the key.
        assert_error(&edit(BASE, r#""15s""#, r#""0s""#), 32, &["number \"+15550100\"", "routing.ring_timeout"]);
        assert_error(&edit(BASE, r#""10m""#, r#""0s""#), 36, &["number \"+15550100\"", "queue.max_wait"]);
        let text = edit(
            BASE,
            "overflow = \"voicemail\"\n",
            "overflow = \"voicemail\"\ncallback = true\ncallback_attempts = 11\n",
        );
        assert_error(&text, 39, &["queue.callback_attempts"]);
        // Inline tables are located too.
        let text = edit(BASE, r#"assigned = ["gina"]"#, "assigned = [\"gina\"]\nrouting = { wrap_up = \"2h\" }");
        assert_error(&text, 53, &["+15550200", "routing.wrap_up"]);
        // Overflow forwards must not loop.
        assert_error(&edit(BASE, r#""voicemail""#, r#""forward:+15550100""#), 37, &["+15550100", "itself"]);
        let text = format!(
            "{}\n[accounts.numbers.queue]\noverflow = \"forward:+15550100\"\n",
            edit(BASE, r#""voicemail""#, r#""forward:+15550200""#)
        );
        assert_error(&text, 25, &["loop", "+15550100 -> +15550200 -> +15550100"]);
        parse_ok(&edit(BASE, r#""voicemail""#, r#""forward:+15550200""#));
    }

    #[test]
    fn the_outbound_queue_must_hold_a_full_burst() {
        let text = "[server]\noutbound_queue = 64\nrate_limit_burst = 100\n";
        let err = parse(text, Path::new("x.toml")).unwrap_err().to_string();
        assert!(
            err.contains("server.outbound_queue (64) must be at least server.rate_limit_burst (100) + 32"),
            "{err}"
        );
    }
}
