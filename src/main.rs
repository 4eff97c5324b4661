//! `ringline serve [--config PATH] [--listen ADDR] [--data DIR] [--log-format human|json]`

use clap::{Parser, Subcommand};
use ringline::config;
use ringline::server::{self, Options};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

// For memory, not speed: an idle connection's buffers cost 7.9 KiB with
// mimalloc against 9.0 KiB with glibc's malloc; the latency difference was
// within the noise (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ringline", version, about = "Real-time call distribution for shared phone numbers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// The TOML config file.
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Address to listen on (overrides `listen`); port 0 picks a free one.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (overrides `data_dir`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Log format (overrides `server.log_format`).
        #[arg(long, value_parser = ["human", "json"])]
        log_format: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve { config: path, listen, data, log_format } = cli.command;
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringline: {e}");
            return ExitCode::from(2);
        }
    };
    let json = match log_format.as_deref() {
        Some(f) => f == "json",
        None => cfg.server.log_format == config::LogFormat::Json,
    };
    init_logging(json);
    // Before the runtime starts its threads (see src/huge_pages.rs).
    if !cfg.server.huge_code_pages {
        tracing::info!("machine code stays on 4 KiB pages: server.huge_code_pages is false");
    } else {
        match ringline::huge_pages::move_code() {
            Ok(m) => tracing::info!(
                code_mib = m.bytes >> 20,
                huge_mib = m.huge_bytes >> 20,
                "machine code moved onto 2 MiB pages"
            ),
            Err(e) => tracing::info!("machine code stays on 4 KiB pages: {e}"),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match server::start(cfg, Options { listen, data_dir: data }).await {
            Ok(running) => {
                running.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("ringline: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
