//! `ringline-loadtest`: load generator for the ringline server.
//!
//! ```text
//! ringline-loadtest gen-config [TOPOLOGY] [-o FILE]
//! ringline-loadtest run (--target ADDR --config FILE [--server-pid PID] | --spawn-server BIN [--config FILE | TOPOLOGY]) [LOAD]
//! ringline-loadtest baseline [--rate R] [--duration D]
//! ringline-loadtest idle (--target ADDR --config FILE --server-pid PID | --spawn-server BIN [TOPOLOGY] | --bare) [--connections N]
//! ringline-loadtest cold-memory [--idle D]... [--lines N] [--rounds N]
//! ```

// Timing is this program's job (clock reads next to sockets, sampler
// threads that sleep): the workspace's clock bans target the routing core.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ringline_loadtest::config::{Dur, GenParams, Topology, generate};
use ringline_loadtest::driver::{Arrival, Behaviour};
use ringline_loadtest::run::{self, BaselineEcho, IdleTarget, RunSettings};
use ringline_loadtest::spawn::Spawned;
use ringline_loadtest::wire::Encoding;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ringline-loadtest",
    version,
    about = "Drives a ringline server through its WebSocket protocol and measures it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print (or write) a server config for a load run.
    GenConfig {
        #[command(flatten)]
        topology: GenParams,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Play the gateway and every agent against a server; report latencies,
    /// outcomes, invariant violations, server CPU and RSS.
    Run(Box<RunArgs>),
    /// Measure only the bare WebSocket round trip (in-process echo server).
    Baseline {
        /// Round trips per second (Poisson).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value = "10s")]
        duration: Dur,
        #[arg(long, value_enum, default_value_t = Encoding::Json)]
        encoding: Encoding,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value = "loadtest-baseline.json")]
        report: PathBuf,
    },
    /// Memory per idle connection: server RSS before and after connecting
    /// N agents that then stay idle.
    Idle(Box<IdleArgs>),
    /// How slow this machine's memory is after a thread slept: a pointer
    /// chase over N cache lines (one per 4 KiB page, random order) after
    /// each idle time, on 4 KiB and on 2 MiB pages, and a control that
    /// touches no memory. Explains light-load latency on VMs
    /// (docs/benchmarks.md).
    ColdMemory {
        /// Sleep before each chase; repeat for several (default 1ms, 10ms, 100ms).
        #[arg(long)]
        idle: Vec<Dur>,
        /// Cache lines per chase (about what one event touches).
        #[arg(long, default_value_t = 300)]
        lines: usize,
        /// Chases per setting.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
    /// A bare tokio-tungstenite echo server (used by `idle --bare`).
    #[command(hide = true)]
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Where the server is: a running one, or one to start.
#[derive(Args)]
struct ServerArgs {
    /// Address of a running server.
    #[arg(long, conflicts_with = "spawn_server")]
    target: Option<SocketAddr>,
    /// The server's config (tokens, numbers); with --spawn-server, the
    /// config to start it with instead of a generated one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// PID of the running server, to sample its CPU and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start this ringline binary (`serve --listen 127.0.0.1:0`) with the
    /// config and a temporary data dir, and stop it afterwards.
    #[arg(long)]
    spawn_server: Option<PathBuf>,
    /// Data dir for --spawn-server (default: a temporary one).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    topology: GenParams,
}

/// `poisson` or `burst:SIZE`.
#[derive(Clone, Copy, Debug)]
enum ArrivalKind {
    Poisson,
    Burst(u32),
}

impl FromStr for ArrivalKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "poisson" => Ok(ArrivalKind::Poisson),
            Some(("burst", n)) => n
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(ArrivalKind::Burst)
                .ok_or_else(|| format!("bad burst size in {s:?}")),
            _ => Err(format!("arrival must be `poisson` or `burst:SIZE`, not {s:?}")),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Calls per second; a comma-separated list runs one phase per rate.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    rate: Vec<f64>,
    /// `poisson` (exponential gaps) or `burst:SIZE` (SIZE calls at once,
    /// every SIZE/rate seconds).
    #[arg(long, default_value = "poisson")]
    arrival: ArrivalKind,
    /// Arrivals per phase last this long.
    #[arg(long, default_value = "30s")]
    duration: Dur,
    /// Latencies of the first part of each phase are not recorded.
    #[arg(long, default_value = "2s")]
    warmup: Dur,
    /// After arrivals stop, wait this long for calls to finish, then hang
    /// up the rest.
    #[arg(long, default_value = "30s")]
    drain: Dur,
    /// Mean time an agent takes to accept or decline (exponential).
    #[arg(long, default_value = "200ms")]
    answer_mean: Dur,
    /// Mean talk time (exponential).
    #[arg(long, default_value = "3s")]
    talk_mean: Dur,
    #[arg(long, default_value_t = 0.05)]
    decline_prob: f64,
    /// An agent lets the offer ring until it expires.
    #[arg(long, default_value_t = 0.02)]
    no_answer_prob: f64,
    /// A queued caller asks for a callback (turns callbacks on in a
    /// generated config).
    #[arg(long, default_value_t = 0.0)]
    callback_prob: f64,
    /// Mean time in queue before asking for a callback.
    #[arg(long, default_value = "1s")]
    callback_after_mean: Dur,
    /// A callback dial reaches nobody.
    #[arg(long, default_value_t = 0.0)]
    callback_fail_prob: f64,
    /// The gateway fails to connect the agent leg.
    #[arg(long, default_value_t = 0.0)]
    bridge_fail_prob: f64,
    /// After a call, an agent goes away...
    #[arg(long, default_value_t = 0.0)]
    away_prob: f64,
    /// ...for this long on average, then comes back.
    #[arg(long, default_value = "5s")]
    away_mean: Dur,
    /// After a call, an agent ends wrap-up early.
    #[arg(long, default_value_t = 0.0)]
    wrapup_done_prob: f64,
    #[arg(long, default_value = "500ms")]
    wrapup_done_mean: Dur,
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// Seed of every random choice of the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Baseline round trips per second during each phase (default:
    /// min(rate, 100); 0 = no baseline).
    #[arg(long)]
    baseline_rate: Option<f64>,
    /// Where the baseline's echo server runs: `process` (a child process,
    /// like the server under test) or `in-process` (a runtime inside the
    /// harness).
    #[arg(long, value_enum, default_value_t = BaselineEcho::Process)]
    baseline_echo: BaselineEcho,
    /// Agent connections opened at once.
    #[arg(long, default_value_t = 500)]
    connect_concurrency: usize,
    /// Pause between connecting and the first phase.
    #[arg(long, default_value = "2s")]
    settle: Dur,
    /// Harness worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The JSON report.
    #[arg(long, default_value = "loadtest-report.json")]
    report: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Measure the bare tokio-tungstenite echo server instead (started as
    /// a child process of this program).
    #[arg(long, conflicts_with_all = ["target", "spawn_server"])]
    bare: bool,
    /// Connections for --bare (for ringline: every agent of the config).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Wait before the "before" sample and again before the "after" one.
    #[arg(long, default_value = "5s")]
    settle: Dur,
    #[arg(long, default_value_t = 500)]
    connect_concurrency: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = "loadtest-idle.json")]
    report: PathBuf,
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
}

/// Ctrl-C ends the run with an error, so a spawned server is stopped.
async fn interruptible<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        r = f => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?)
}

/// The config text and, if we start it, the server.
fn server_for(
    args: &ServerArgs,
    callbacks: bool,
) -> anyhow::Result<(String, SocketAddr, Option<u32>, Option<Spawned>)> {
    let text = match &args.config {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        None if args.spawn_server.is_some() => {
            let mut params = args.topology.clone();
            params.callbacks |= callbacks;
            generate(&params)?
        }
        None => bail!("--target needs --config (the file the server runs with, for its tokens and numbers)"),
    };
    match (&args.spawn_server, args.target) {
        (Some(bin), _) => {
            eprintln!("starting {} ...", bin.display());
            let s = Spawned::ringline(bin, &text, args.data_dir.as_deref())?;
            eprintln!("server pid {} listening on {}", s.pid, s.addr);
            Ok((text, s.addr, Some(s.pid), Some(s)))
        }
        (None, Some(addr)) => Ok((text, addr, args.server_pid, None)),
        (None, None) => bail!("give --target ADDR (a running server) or --spawn-server BIN"),
    }
}

fn write_json<T: serde::Serialize>(path: &PathBuf, v: &T) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

fn cmd_run(a: RunArgs) -> anyhow::Result<ExitCode> {
    if a.rate.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        bail!("--rate must be above 0");
    }
    let probs = [
        a.decline_prob,
        a.no_answer_prob,
        a.callback_prob,
        a.callback_fail_prob,
        a.bridge_fail_prob,
        a.away_prob,
        a.wrapup_done_prob,
    ];
    if probs.iter().any(|p| !(0.0..=1.0).contains(p)) || a.decline_prob + a.no_answer_prob > 1.0 {
        bail!("probabilities are between 0 and 1 (and decline + no-answer at most 1)");
    }
    let (text, addr, pid, spawned) = server_for(&a.server, a.callback_prob > 0.0)?;
    let topo = Topology::from_config(&text)?;
    let phases = a
        .rate
        .iter()
        .map(|&rate| match a.arrival {
            ArrivalKind::Poisson => Arrival::Poisson { rate },
            ArrivalKind::Burst(size) => Arrival::Burst { rate, size },
        })
        .collect();
    let settings = RunSettings {
        target: Some(addr),
        phases,
        duration: a.duration.0,
        warmup: a.warmup.0,
        drain: a.drain.0,
        behaviour: Behaviour {
            answer_mean: a.answer_mean.0,
            talk_mean: a.talk_mean.0,
            decline_prob: a.decline_prob,
            no_answer_prob: a.no_answer_prob,
            callback_prob: a.callback_prob,
            callback_after_mean: a.callback_after_mean.0,
            callback_fail_prob: a.callback_fail_prob,
            bridge_fail_prob: a.bridge_fail_prob,
            away_prob: a.away_prob,
            away_mean: a.away_mean.0,
            wrapup_done_prob: a.wrapup_done_prob,
            wrapup_done_mean: a.wrapup_done_mean.0,
            encoding: a.encoding,
            seed: a.seed,
        },
        baseline_rate: a.baseline_rate,
        baseline_echo: a.baseline_echo,
        connect_concurrency: a.connect_concurrency,
        server_pid: pid,
        sample_every: Duration::from_secs(1),
        progress_every: (!a.quiet).then_some(Duration::from_secs(1)),
        settle: a.settle.0,
    };
    let rt = runtime(a.threads)?;
    let result = rt.block_on(interruptible(run::run(settings, topo)));
    if let Some(mut s) = spawned {
        if !s.is_running() {
            eprintln!("the server exited during the run; its last log lines:\n{}", s.log_tail().join("\n"));
        }
        drop(s);
    }
    let mut report = result?;
    if let Some(obj) = report.settings.as_object_mut() {
        obj.insert("topology_params".into(), serde_json::to_value(&a.server.topology)?);
        obj.insert("threads".into(), a.threads.into());
        obj.insert("spawned".into(), a.server.spawn_server.is_some().into());
    }
    write_json(&a.report, &report)?;
    print!("{}", report.human());
    println!("report: {}", a.report.display());
    Ok(if report.invariants.violations > 0 { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

fn cmd_idle(a: IdleArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime(a.threads)?;
    let (target, _keep) = if a.bare {
        let exe = std::env::current_exe()?;
        let s = Spawned::echo(&exe)?;
        let t = IdleTarget {
            addr: s.addr,
            pid: s.pid,
            server: "bare tokio-tungstenite echo (4 KiB read buffer)".into(),
            paths: vec!["/".to_owned(); a.connections],
            expect_hello: false,
        };
        (t, Some(s))
    } else {
        let (text, addr, pid, spawned) = server_for(&a.server, false)?;
        let pid = pid.context("idle needs the server's pid (--server-pid) to read its RSS")?;
        let topo = Topology::from_config(&text)?;
        let paths = topo
            .agents
            .iter()
            .map(|ag| format!("/v1/agent?token={}&encoding={}", ag.token, a.encoding.query()))
            .collect();
        (IdleTarget { addr, pid, server: "ringline".into(), paths, expect_hello: true }, spawned)
    };
    let report = rt.block_on(interruptible(run::idle(target, a.settle.0, a.connect_concurrency, true)))?;
    write_json(&a.report, &report)?;
    print!("{}", report.human());
    println!("report: {}", a.report.display());
    Ok(ExitCode::SUCCESS)
}

fn cmd_echo(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    // Same runtime shape as the ringline server: one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let (_stop, rx) = tokio::sync::watch::channel(false);
        ringline_loadtest::echo::serve(listener, rx).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::GenConfig { topology, output } => generate(&topology).and_then(|text| {
            match output {
                Some(p) => std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }),
        Cmd::Run(a) => cmd_run(*a),
        Cmd::Baseline { rate, duration, encoding, threads, report } => (|| {
            let rt = runtime(threads)?;
            let r = rt.block_on(run::baseline(rate, duration.0, encoding, Some(Duration::from_secs(1))))?;
            write_json(&report, &r)?;
            print!("{}", r.human());
            println!("report: {}", report.display());
            Ok(ExitCode::SUCCESS)
        })(),
        Cmd::Idle(a) => cmd_idle(*a),
        Cmd::EchoServer { listen } => cmd_echo(listen),
        Cmd::ColdMemory { idle, lines, rounds } => {
            let idle = if idle.is_empty() {
                [1, 10, 100].map(Duration::from_millis).to_vec()
            } else {
                idle.into_iter().map(|d| d.0).collect()
            };
            use ringline_loadtest::coldmem;
            for huge in [false, true] {
                for &d in &idle {
                    println!("{}", coldmem::measure(d, lines, rounds.max(1), huge).human());
                }
            }
            for &d in &idle {
                let p50 = coldmem::compute_after(d, rounds.max(1)).quantile_us(0.5);
                println!("idle {d:>8.1?}  compute only (no memory): p50 {p50:>8.1} us");
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringline-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
