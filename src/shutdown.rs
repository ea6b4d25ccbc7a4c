//! Stop signals, owned by Trident rather than Pingora's defaults.
//!
//! Pingora's fast shutdown (SIGINT) stops the per-worker runtimes without
//! first telling the accept loops to stop. An accept loop runs on a random
//! worker while its listener is registered with the reactor of the worker that
//! built it; once that worker is gone, every `accept()` fails at once ("A Tokio
//! 1.x context was found, but it is being shutdown") without using up the
//! task's budget, so the loop never yields, its own worker never gets to shut
//! down, and the process spins forever logging `Accept() failed` (17 MB of
//! log in 10 s in `tests/shutdown.rs`). A graceful stop (SIGTERM) tells the
//! accept loops first, so it is not affected; a watchdog still bounds it.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// How long past the configured grace period and shutdown timeout a graceful
/// stop may take before the process exits anyway.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// Pingora's wait for a new process to take the listeners on SIGQUIT.
const UPGRADE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// SIGTERM: graceful stop (grace period, then at most the shutdown timeout);
/// SIGQUIT: graceful upgrade; SIGINT: exit at once, as a fast stop drops every
/// request anyway.
pub struct Signals {
    /// The most a graceful stop may take: grace period + shutdown timeout + margin.
    pub deadline: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut terminate), Ok(mut interrupt), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot listen for stop signals; only SIGKILL stops Trident");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => {
                log::info!("SIGTERM received: stopping gracefully");
                exit_after(self.deadline, "SIGTERM");
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => {
                log::info!("SIGQUIT received: handing the listeners over, then stopping");
                exit_after(self.deadline + UPGRADE_CLOSE_TIMEOUT, "SIGQUIT");
                ShutdownSignal::GracefulUpgrade
            }
            _ = interrupt.recv() => {
                log::info!("SIGINT received: exiting now");
                log::logger().flush();
                std::process::exit(0)
            }
        }
    }
}

/// Exits the process if it is still running `deadline` from now: a stop that
/// hangs (a task that never yields) must not keep the process, and its logs, alive.
fn exit_after(deadline: Duration, signal: &'static str) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".to_owned())
        .spawn(move || {
            std::thread::sleep(deadline);
            log::error!("{signal}: shutdown did not finish within {deadline:?}; exiting anyway");
            log::logger().flush();
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the shutdown watchdog: {e}");
    }
}
