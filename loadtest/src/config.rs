//! Server configs for load runs: generating one (accounts, agents, numbers,
//! how agents are spread over numbers, the strategy mix, server limits that
//! fit a load test) and reading any ringline config back into the topology
//! the harness drives (who to connect as, which numbers to call).

use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::Duration;

/// A duration written like the server's config: `250ms`, `2s`, `1m`, `1h`, `0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 250ms, 2s, 1m)"))?;
        let secs = match unit {
            "us" => v / 1e6,
            "ms" => v / 1e3,
            "s" => v,
            "m" => v * 60.0,
            "h" => v * 3600.0,
            _ => return Err(format!("invalid duration unit in {s:?} (use us, ms, s, m or h)")),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("invalid duration {s:?}"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Serializes a duration the way the config writes it (`"200ms"`).
pub fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Dur(*d).serialize(s)
}

/// The four routing strategies of the protocol.
pub const STRATEGIES: [&str; 4] = ["ring_all", "ring_in_order", "round_robin", "longest_idle"];

/// `ring_all:1,round_robin:2`: weights of each strategy over the numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrategyMix(pub Vec<(String, u32)>);

impl FromStr for StrategyMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part.split_once(':').unwrap_or((part, "1"));
            if !STRATEGIES.contains(&name) {
                return Err(format!("unknown strategy {name:?} (one of {})", STRATEGIES.join(", ")));
            }
            let w: u32 = w.parse().map_err(|_| format!("bad weight in {part:?}"))?;
            if w > 0 {
                out.push((name.to_owned(), w));
            }
        }
        if out.is_empty() {
            return Err("the strategy mix needs at least one strategy with a weight above 0".into());
        }
        Ok(StrategyMix(out))
    }
}

impl fmt::Display for StrategyMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(s, w)| format!("{s}:{w}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl StrategyMix {
    /// Smooth weighted round robin: the strategy of each of `n` numbers,
    /// interleaved, with counts exactly proportional to the weights (+-1).
    pub fn assign(&self, n: usize) -> Vec<String> {
        let total: i64 = self.0.iter().map(|(_, w)| i64::from(*w)).sum();
        let mut current = vec![0i64; self.0.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            for (c, (_, w)) in current.iter_mut().zip(&self.0) {
                *c += i64::from(*w);
            }
            let (best, _) =
                current.iter().enumerate().max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i))).unwrap_or((0, &0));
            current[best] -= total;
            out.push(self.0[best].0.clone());
        }
        out
    }
}

/// What `gen-config` (and `run --spawn-server` without `--config`) builds.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct GenParams {
    /// Agents (users with a token, each one WebSocket).
    #[arg(long, default_value_t = 1000)]
    pub agents: u32,
    /// Phone numbers the gateway calls.
    #[arg(long, default_value_t = 100)]
    pub numbers: u32,
    /// Accounts the agents and numbers are split over (they spread over the
    /// server's shards); 0 = one per 10 numbers.
    #[arg(long, default_value_t = 0)]
    pub accounts: u32,
    /// Numbers a shared agent serves (within its account).
    #[arg(long, default_value_t = 2)]
    pub per_agent: u32,
    /// Fraction of agents that are shared (serve `--per-agent` numbers); the
    /// others serve one.
    #[arg(long, default_value_t = 1.0)]
    pub shared: f64,
    /// Routing strategy weights over the numbers.
    #[arg(long, default_value = "ring_all:1,ring_in_order:1,round_robin:1,longest_idle:1")]
    pub strategies: StrategyMix,
    /// How long an offer rings before it expires.
    #[arg(long, default_value = "2s")]
    pub ring_timeout: Dur,
    /// After-call work before an agent is offered the next call.
    #[arg(long, default_value = "0s")]
    pub wrap_up: Dur,
    /// Callers a number's queue holds before overflowing to voicemail.
    #[arg(long, default_value_t = 50)]
    pub max_waiting: u32,
    /// Longest wait in queue before overflowing to voicemail.
    #[arg(long, default_value = "2m")]
    pub max_wait: Dur,
    /// Let queued callers ask for a callback (on every number).
    #[arg(long)]
    pub callbacks: bool,
    /// Pause between two callback dial attempts.
    #[arg(long, default_value = "5s")]
    pub callback_retry_after: Dur,
    /// Server engine shards.
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    /// Journal entries between snapshots (server default when omitted).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Seed of the agent-to-number spread.
    #[arg(long, default_value_t = 1)]
    pub topology_seed: u64,
}

impl GenParams {
    pub fn account_count(&self) -> u32 {
        let a = if self.accounts == 0 { self.numbers.div_ceil(10) } else { self.accounts };
        a.clamp(1, self.numbers.max(1)).min(self.agents.max(1))
    }
}

pub const GATEWAY_TOKEN: &str = "lt-gateway-token";

/// A phone number from a global index: `+1555` and seven digits.
pub fn number_of(i: u32) -> String {
    format!("+1555{:07}", i)
}

/// The TOML of a server config for a load run.
pub fn generate(p: &GenParams) -> anyhow::Result<String> {
    if p.agents == 0 || p.numbers == 0 {
        bail!("need at least one agent and one number");
    }
    if p.numbers > 9_999_999 {
        bail!("at most 9,999,999 numbers");
    }
    if !(0.0..=1.0).contains(&p.shared) {
        bail!("--shared is a fraction between 0 and 1");
    }
    if p.per_agent == 0 {
        bail!("--per-agent must be at least 1");
    }
    let accounts = p.account_count();
    let strategies = p.strategies.assign(p.numbers as usize);
    let mut rng = SmallRng::seed_from_u64(p.topology_seed);
    let mut t = String::with_capacity(200 * p.agents as usize + 600 * p.numbers as usize);
    let _ = writeln!(
        t,
        "# Generated by `ringline-loadtest gen-config`: {} agents, {} numbers, {accounts} accounts,",
        p.agents, p.numbers
    );
    let _ =
        writeln!(t, "# {:.0}% of agents on {} numbers, strategies {}.", p.shared * 100.0, p.per_agent, p.strategies);
    t.push_str("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n");
    // Limits for a load test: pings well apart, the gateway allowed
    // 100 x 200 = 20,000 events/s, nobody closed for error replies (they
    // are counted in the report instead), queues deep enough for bursts.
    t.push_str("[server]\n");
    let _ = writeln!(t, "shards = {}", p.shards);
    t.push_str(
        "ping_interval = \"20s\"\nidle_timeout = \"60s\"\nrate_limit_per_sec = 200\nrate_limit_burst = 400\n\
         outbound_queue = 1024\nabuse_errors_before_close = 0\n",
    );
    if let Some(s) = p.snapshot_every {
        let _ = writeln!(t, "snapshot_every = {s}");
    }
    let _ = writeln!(t, "\n[[gateways]]\nname = \"loadtest\"\ntoken = \"{GATEWAY_TOKEN}\"\n");
    for a in 0..accounts {
        let (a0, a1) = split(p.agents, accounts, a);
        let (n0, n1) = split(p.numbers, accounts, a);
        let m = n1 - n0;
        let _ = writeln!(t, "[[accounts]]\nid = \"lt-{a}\"\nplan = \"team\"\n");
        let mut assigned: Vec<Vec<u32>> = vec![Vec::new(); m as usize];
        for (j, i) in (a0..a1).enumerate() {
            let role = if j == 0 { "owner" } else { "agent" };
            let _ = writeln!(
                t,
                "[[accounts.users]]\nid = \"agent-{i}\"\nemail = \"agent-{i}@lt.test\"\nrole = \"{role}\"\ntoken = \"agent-{i}-token\"\n"
            );
            let primary = j as u32 % m;
            assigned[primary as usize].push(i);
            let k = if rng.random_bool(p.shared) { p.per_agent.min(m) } else { 1 };
            let mut mine = vec![primary];
            while (mine.len() as u32) < k {
                let n = rng.random_range(0..m);
                if !mine.contains(&n) {
                    mine.push(n);
                    assigned[n as usize].push(i);
                }
            }
        }
        for (k, agents) in assigned.iter_mut().enumerate() {
            agents.sort_unstable();
            let n = n0 + k as u32;
            let names: Vec<String> = agents.iter().map(|i| format!("\"agent-{i}\"")).collect();
            let _ = writeln!(
                t,
                "[[accounts.numbers]]\nnumber = \"{}\"\nname = \"LT {n}\"\nassigned = [{}]\n",
                number_of(n),
                names.join(", ")
            );
            let _ = writeln!(
                t,
                "[accounts.numbers.routing]\nstrategy = \"{}\"\nring_timeout = \"{}\"\nwrap_up = \"{}\"\n",
                strategies[n as usize], p.ring_timeout, p.wrap_up
            );
            let _ = writeln!(
                t,
                "[accounts.numbers.queue]\nmax_waiting = {}\nmax_wait = \"{}\"\nannounce_position = true\n\
                 announce_every = \"30s\"\ncallback = {}\ncallback_attempts = 3\ncallback_retry_after = \"{}\"\n\
                 overflow = \"voicemail\"\n",
                p.max_waiting, p.max_wait, p.callbacks, p.callback_retry_after
            );
        }
    }
    Ok(t)
}

/// The `i`-th of `parts` near-equal ranges of `0..total`.
fn split(total: u32, parts: u32, i: u32) -> (u32, u32) {
    let lo = (u64::from(total) * u64::from(i) / u64::from(parts)) as u32;
    let hi = (u64::from(total) * u64::from(i + 1) / u64::from(parts)) as u32;
    (lo, hi)
}

/// One agent the harness connects as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSpec {
    pub user: String,
    pub account: u32,
    pub token: String,
}

/// One number the gateway calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberSpec {
    pub number: String,
    pub account: u32,
    pub strategy: String,
    /// Indices into [`Topology::agents`].
    pub targets: Vec<u32>,
    pub callback: bool,
}

/// What a run drives: accounts, agents, numbers, the gateway's token.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub accounts: Vec<String>,
    pub agents: Vec<AgentSpec>,
    pub numbers: Vec<NumberSpec>,
    pub gateway_token: String,
}

#[derive(Deserialize)]
struct FileCfg {
    #[serde(default)]
    gateways: Vec<FileGateway>,
    #[serde(default)]
    accounts: Vec<FileAccount>,
}

#[derive(Deserialize)]
struct FileGateway {
    token: Option<String>,
    accounts: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct FileAccount {
    id: String,
    #[serde(default)]
    users: Vec<FileUser>,
    #[serde(default)]
    numbers: Vec<FileNumber>,
}

#[derive(Deserialize)]
struct FileUser {
    id: String,
    token: Option<String>,
}

#[derive(Deserialize)]
struct FileNumber {
    number: String,
    #[serde(default)]
    assigned: Vec<String>,
    routing: Option<FileRouting>,
    queue: Option<FileQueue>,
}

#[derive(Deserialize)]
struct FileRouting {
    strategy: Option<String>,
    targets: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct FileQueue {
    callback: Option<bool>,
}

impl Topology {
    /// Reads a ringline config: agents are the users with a token who are a
    /// routing target of some number; numbers are those with such a target.
    /// The gateway is the first one with a token allowed for every account.
    pub fn from_config(text: &str) -> anyhow::Result<Topology> {
        let cfg: FileCfg = toml::from_str(text).context("reading the server config")?;
        let gateway_token = cfg
            .gateways
            .iter()
            .filter(|g| g.accounts.is_none())
            .find_map(|g| g.token.clone())
            .context("the config has no gateway with a token that serves every account")?;
        let mut topo = Topology { gateway_token, ..Default::default() };
        for (ai, acc) in cfg.accounts.iter().enumerate() {
            let ai = ai as u32;
            topo.accounts.push(acc.id.clone());
            let tokens: HashMap<&str, &str> =
                acc.users.iter().filter_map(|u| Some((u.id.as_str(), u.token.as_deref()?))).collect();
            let mut index: HashMap<String, u32> = HashMap::new();
            for n in &acc.numbers {
                let routing = n.routing.as_ref();
                let targets = routing.and_then(|r| r.targets.clone()).unwrap_or_else(|| n.assigned.clone());
                let mut ix = Vec::new();
                for user in targets {
                    let Some(token) = tokens.get(user.as_str()) else { continue };
                    let next = topo.agents.len() as u32;
                    let i = *index.entry(user.clone()).or_insert_with(|| {
                        topo.agents.push(AgentSpec { user: user.clone(), account: ai, token: (*token).to_owned() });
                        next
                    });
                    ix.push(i);
                }
                if ix.is_empty() {
                    continue;
                }
                topo.numbers.push(NumberSpec {
                    number: n.number.clone(),
                    account: ai,
                    strategy: routing.and_then(|r| r.strategy.clone()).unwrap_or_else(|| "ring_all".into()),
                    targets: ix,
                    callback: n.queue.as_ref().and_then(|q| q.callback).unwrap_or(false),
                });
            }
        }
        if topo.numbers.is_empty() {
            bail!("the config has no number with a routing target that has a token");
        }
        Ok(topo)
    }

    /// Agents serving more than one number.
    pub fn shared_agents(&self) -> usize {
        let mut count = vec![0u32; self.agents.len()];
        for n in &self.numbers {
            for &t in &n.targets {
                count[t as usize] += 1;
            }
        }
        count.iter().filter(|&&c| c > 1).count()
    }

    pub fn strategy_counts(&self) -> Vec<(String, usize)> {
        STRATEGIES
            .iter()
            .map(|s| (s.to_string(), self.numbers.iter().filter(|n| n.strategy == *s).count()))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    pub fn mean_targets(&self) -> f64 {
        let total: usize = self.numbers.iter().map(|n| n.targets.len()).sum();
        total as f64 / self.numbers.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        g: GenParams,
    }

    fn params(args: &[&str]) -> GenParams {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        P::parse_from(v).g
    }

    #[test]
    fn durations_read_and_print_like_the_server_config() {
        assert_eq!("250ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(250))));
        assert_eq!("2s".parse::<Dur>(), Ok(Dur(Duration::from_secs(2))));
        assert_eq!("1.5s".parse::<Dur>(), Ok(Dur(Duration::from_millis(1500))));
        assert_eq!("2m".parse::<Dur>(), Ok(Dur(Duration::from_secs(120))));
        assert_eq!("0".parse::<Dur>(), Ok(Dur(Duration::ZERO)));
        assert!("5 parsecs".parse::<Dur>().is_err());
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Dur(Duration::from_secs(120)).to_string(), "120s");
    }

    #[test]
    fn the_strategy_mix_is_proportional_and_interleaved() {
        let mix: StrategyMix = "ring_all:1,round_robin:3".parse().expect("valid mix");
        let got = mix.assign(8);
        assert_eq!(got.iter().filter(|s| *s == "ring_all").count(), 2);
        assert_eq!(got.iter().filter(|s| *s == "round_robin").count(), 6);
        assert_ne!(got[..2], ["ring_all", "ring_all"], "interleaved, not grouped");
        assert!("ring_some:1".parse::<StrategyMix>().is_err());
        assert!("ring_all:0".parse::<StrategyMix>().is_err());
    }

    #[test]
    fn a_generated_config_reads_back_as_its_topology() {
        let p = params(&["--agents", "120", "--numbers", "30", "--per-agent", "3", "--shared", "0.5", "--callbacks"]);
        assert_eq!(p.account_count(), 3);
        let text = generate(&p).expect("generates");
        let topo = Topology::from_config(&text).expect("reads back");
        assert_eq!(topo.accounts.len(), 3);
        assert_eq!(topo.agents.len(), 120);
        assert_eq!(topo.numbers.len(), 30);
        assert_eq!(topo.gateway_token, GATEWAY_TOKEN);
        assert!(topo.numbers.iter().all(|n| n.callback && !n.targets.is_empty()));
        // Every agent stays within its account.
        for n in &topo.numbers {
            assert!(n.targets.iter().all(|&t| topo.agents[t as usize].account == n.account));
        }
        // About half the agents serve three numbers, the rest one.
        let shared = topo.shared_agents();
        assert!((30..=90).contains(&shared), "{shared} shared agents");
        let seats: usize = topo.numbers.iter().map(|n| n.targets.len()).sum();
        assert_eq!(seats, 120 + 2 * shared);
        assert_eq!(topo.strategy_counts().iter().map(|(_, c)| c).sum::<usize>(), 30);
        let five = topo.agents.iter().find(|a| a.user == "agent-5").expect("agent-5 serves a number");
        assert_eq!(five.token, "agent-5-token");
    }

    #[test]
    fn an_ordinary_config_gives_its_targets_with_tokens() {
        let text = r#"
[[gateways]]
name = "limited"
token = "gw-a"
accounts = ["acme"]

[[gateways]]
name = "edge"
token = "gw-all"

[[accounts]]
id = "acme"
plan = "team"

[[accounts.users]]
id = "alice"
token = "alice-token"

[[accounts.users]]
id = "bob"

[[accounts.numbers]]
number = "+15550100"
assigned = ["alice", "bob"]

[[accounts.numbers]]
number = "+15550101"
assigned = ["bob"]
"#;
        let topo = Topology::from_config(text).expect("reads");
        assert_eq!(topo.gateway_token, "gw-all");
        assert_eq!(topo.agents.len(), 1, "bob has no token");
        assert_eq!(topo.numbers.len(), 1, "nobody with a token serves +15550101");
        assert_eq!(topo.numbers[0].strategy, "ring_all");
    }
}
