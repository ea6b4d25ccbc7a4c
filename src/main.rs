//! The `trident` command line: `run`, `check` and `demo`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trident::config::{LogSettings, Secrets};
use trident::telemetry::error_log;

/// glibc's malloc was a tenth of the proxy's CPU time under load (its free
/// lists and consolidation); mimalloc's per-thread pages cost a fraction of it.
/// Built without transparent huge pages (`no_thp`): with them, idle RSS went
/// from 13 to 23 MB and 1,000 open connections from 50 to 117 MB, for no
/// measurable CPU gain (`cargo bench --bench load`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "trident",
    version,
    about = "A Triton-aware L7 proxy for NVIDIA Triton Inference Server pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listening sockets of the Trident running now: start
        /// this, then send the old process SIGQUIT (see the README, "Running in production").
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file; prints every mistake and warning with its line and key path.
    #[command(alias = "config")]
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
        /// Print the effective config (every default filled in, secrets redacted) on
        /// stdout, like `nginx -T`.
        #[arg(long)]
        print: bool,
        /// With `--print`: show secrets instead of redacting them.
        #[arg(long, requires = "print")]
        secrets: bool,
    },
    /// Serve Trident in front of three in-process mock Triton servers.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8000")]
        http_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8001")]
        grpc_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
    },
}

/// mimalloc's variable for how long freed pages stay resident before they go back to the OS.
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// How long freed pages stay resident, in ms: mimalloc's own default (1 s,
/// and only once the process allocates again) kept an idle proxy at the memory of
/// its busiest moment: after 1,000 client connections closed, 42 MiB stayed
/// resident instead of 18 (`cargo bench --bench soak`). Purging at once (0)
/// costs CPU under load instead: Pingora allocates and frees a zeroed buffer per
/// proxied HTTP request, and with no delay its page went back to the OS and was
/// faulted in again every time (page faults were ~7% of the proxy's CPU, 10–20
/// µs per request in `cargo bench --bench load`). One millisecond keeps the
/// pages a busy proxy reuses and still returns them as connections close
/// (soak: 20 MiB after closing the 1,000 connections, 18 with no delay).
const PURGE_DELAY_MS: &str = "1";

/// mimalloc's options are read from the environment before `main` runs and
/// setting them in-process is unsafe, so a serving process runs itself again,
/// once, with [`PURGE_DELAY_MS`], unless the operator chose a value.
/// Returns only if that could not be done.
fn purge_freed_memory_soon() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(PURGE_DELAY).is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    Some(
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(PURGE_DELAY, PURGE_DELAY_MS)
            .exec(),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let reexec_error = match cli.command {
        Command::Run { .. } | Command::Demo { .. } => purge_freed_memory_soon(),
        Command::Check { .. } => None,
    };
    // Logged once the logger is configured, from the config's `[log]`.
    let reexec_warning = reexec_error.map(|e| {
        format!("freed memory is returned lazily: cannot run again with {PURGE_DELAY}={PURGE_DELAY_MS}: {e}")
    });
    let start_logging = |settings: &LogSettings| {
        error_log::install(settings);
        if let Some(warning) = &reexec_warning {
            log::warn!("{warning}");
        }
    };
    match cli.command {
        Command::Run {
            config: path,
            upgrade,
        } => match trident::config::load_file(&path) {
            Ok(config) => fail({
                start_logging(&config.log);
                trident::server::run(
                    config,
                    trident::server::Start {
                        config_path: Some(path),
                        upgrade,
                    },
                )
            }),
            Err(errors) => {
                eprintln!(
                    "{}: invalid config:\n{}",
                    path.display(),
                    errors.in_file(&path)
                );
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            http_listen,
            grpc_listen,
            admin_listen,
        } => fail(trident::demo::run(
            trident::demo::DemoListeners {
                http: http_listen,
                grpc: grpc_listen,
                admin: admin_listen,
            },
            start_logging,
        )),
        Command::Check {
            config: path,
            strict,
            print,
            secrets,
        } => match trident::config::load_file(&path) {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("{}", warning.warning_in_file(&path));
                }
                if strict && !config.warnings.is_empty() {
                    eprintln!(
                        "{}: {} warning(s), failed with --strict",
                        path.display(),
                        config.warnings.len()
                    );
                    return ExitCode::FAILURE;
                }
                if print {
                    let secrets = if secrets {
                        Secrets::Shown
                    } else {
                        Secrets::Redacted
                    };
                    // The file was just read and checked: reading it again only fails if it went away.
                    let printed = trident::config::read_file(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|text| trident::config::effective(&text, secrets));
                    return match printed {
                        Ok(text) => {
                            print!("{text}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("{}: {e}", path.display());
                            ExitCode::FAILURE
                        }
                    };
                }
                println!(
                    "{}: ok ({} pools, {} routes)",
                    path.display(),
                    config.pools.len(),
                    config.routes.targets.len() - 1
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!(
                    "{}: {} error(s):\n{}",
                    path.display(),
                    errors.0.len(),
                    errors.in_file(&path)
                );
                ExitCode::FAILURE
            }
        },
    }
}

fn fail(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trident: {e}");
            ExitCode::FAILURE
        }
    }
}
