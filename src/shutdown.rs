//! Signals, owned by Trident rather than Pingora's defaults, and the drain
//! that lets a stop or an upgrade fail no request.
//!
//! | signal  | what Trident does |
//! |---------|-------------------|
//! | SIGTERM | drain: `/ready` answers 503 at once; listeners keep accepting for `drain_delay_secs` while every HTTP/1 response closes its connection (clients reconnect, and once the load balancer has removed Trident, elsewhere); then listeners close, h2 clients get GOAWAY, idle connections close, and in-flight requests and streams get up to `shutdown_timeout_secs` to finish; the process exits as soon as none is left. Requests still running then are cut, logged and counted (`trident_requests_cut_total`). |
//! | SIGQUIT | upgrade: the listening sockets go to the `trident run --upgrade` process waiting at `server.upgrade_socket`, then this process drains as for SIGTERM, without the delay (the new one accepts meanwhile). |
//! | SIGHUP  | reload the config file ([`crate::reload`]). |
//! | SIGINT  | exit at once (in-flight requests fail), also during a drain. |
//! | SIGUSR1 | reopen the access log file (`server.access_log`), for logrotate's `postrotate`. |
//! | SIGUSR2 | logged and ignored. |
//!
//! Why SIGINT exits at once rather than through Pingora's fast shutdown:
//! that stops the per-worker runtimes without first telling the accept loops
//! to stop. An accept loop runs on a random worker while its listener is
//! registered with the reactor of the worker that built it; once that worker
//! is gone, every `accept()` fails at once without using up the task's budget,
//! so the loop never yields and the process spins forever logging
//! `Accept() failed` (17 MB of log in 10 s in `tests/shutdown.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::broadcast;

use crate::connection::OpenConnections;
use crate::reload::Live;

/// How long past the drain delay and shutdown timeout a stop may take before
/// the process exits anyway.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// Pingora's wait, after handing the listeners over on SIGQUIT, before it closes them.
const UPGRADE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the drain looks for the last client connection to close.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Whether Trident is draining, for `/ready` and HTTP/1 keep-alive.
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn new() -> Arc<Self> {
        Arc::new(Lifecycle {
            draining: AtomicBool::new(false),
        })
    }

    /// Whether a drain has started: `/ready` is 503, HTTP/1 connections are not kept.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Trident's signal handling (see the module's table).
pub struct Signals {
    pub lifecycle: Arc<Lifecycle>,
    pub live: Arc<Live>,
    /// Client connections over all listeners: the drain ends when none is left.
    pub open: Arc<OpenConnections>,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    /// Pingora's phases, to start counting down once listeners are closed.
    pub phases: std::sync::Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

struct Handlers {
    terminate: Signal,
    quit: Signal,
    interrupt: Signal,
    hangup: Signal,
    user1: Signal,
    user2: Signal,
}

impl Handlers {
    fn install() -> std::io::Result<Self> {
        Ok(Handlers {
            terminate: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
            user2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// What a signal asks the serving process to do.
enum Asked {
    Stop(ShutdownSignal),
    Carry,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut handlers = match Handlers::install() {
            Ok(handlers) => handlers,
            Err(e) => {
                log::error!("cannot listen for signals ({e}); only SIGKILL stops Trident");
                return std::future::pending().await;
            }
        };
        loop {
            if let Asked::Stop(how) = self.next(&mut handlers).await {
                // Signals keep being answered while the drain runs.
                tokio::spawn(while_stopping(handlers, self.live.clone()));
                return how;
            }
        }
    }
}

impl Signals {
    async fn next(&self, handlers: &mut Handlers) -> Asked {
        tokio::select! {
            _ = handlers.terminate.recv() => {
                log::warn!(
                    "SIGTERM: draining: /ready answers 503; listeners close in {:?}, then \
                     in-flight requests get up to {:?}",
                    self.drain_delay, self.shutdown_timeout
                );
                self.lifecycle.start_drain();
                self.watch_drain(self.drain_delay + self.shutdown_timeout);
                tokio::select! {
                    _ = tokio::time::sleep(self.drain_delay) => {}
                    _ = handlers.interrupt.recv() => exit_now(),
                }
                log::warn!("SIGTERM: drain delay over: listeners close");
                Asked::Stop(ShutdownSignal::GracefulTerminate)
            }
            _ = handlers.quit.recv() => {
                log::warn!("SIGQUIT: handing the listeners to the new process, then draining");
                self.lifecycle.start_drain();
                self.watch_drain(UPGRADE_CLOSE_TIMEOUT + self.shutdown_timeout);
                Asked::Stop(ShutdownSignal::GracefulUpgrade)
            }
            _ = handlers.interrupt.recv() => exit_now(),
            _ = handlers.hangup.recv() => {
                let live = self.live.clone();
                // A reload reads files and may wait for a JWKS fetch: not on this runtime's thread.
                let _ = tokio::task::spawn_blocking(move || live.reload()).await;
                Asked::Carry
            }
            _ = handlers.user1.recv() => self.reopen_access_log(),
            _ = handlers.user2.recv() => ignored("SIGUSR2"),
        }
    }

    fn reopen_access_log(&self) -> Asked {
        self.live.current().reopen_access_log();
        Asked::Carry
    }

    /// Once Pingora has closed the listeners, exits as soon as the last client
    /// connection closes; past `longest` from now, a watchdog exits anyway. If
    /// the shutdown timeout ends first, Pingora drops the runtimes: requests
    /// still running are cut (their contexts log and count them on drop), and
    /// [`crate::server::run`] exits once it returns.
    fn watch_drain(&self, longest: Duration) {
        exit_after(longest + SHUTDOWN_MARGIN);
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let open = self.open.clone();
        let live = self.live.clone();
        tokio::spawn(async move {
            loop {
                match phases.recv().await {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                    _ => {}
                }
            }
            let closing = Instant::now();
            while open.count() > 0 {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            log::warn!(
                "drained: every client connection closed {:?} after the listeners",
                closing.elapsed()
            );
            exit_flushed(&live);
        });
    }
}

/// Answers signals once a stop is under way: SIGINT still exits at once; a
/// reload is refused (the process is going away); the access log still reopens.
async fn while_stopping(mut handlers: Handlers, live: Arc<Live>) {
    loop {
        tokio::select! {
            _ = handlers.interrupt.recv() => exit_now(),
            _ = handlers.hangup.recv() => {
                log::warn!("SIGHUP while stopping: no reload");
            }
            _ = handlers.terminate.recv() => log::warn!("SIGTERM: already stopping"),
            _ = handlers.quit.recv() => log::warn!("SIGQUIT: already stopping"),
            _ = handlers.user1.recv() => live.current().reopen_access_log(),
            _ = handlers.user2.recv() => { ignored("SIGUSR2"); }
        }
    }
}

fn ignored(name: &str) -> Asked {
    log::warn!(
        "{name} received and ignored (Trident uses SIGHUP to reload, SIGTERM to stop, SIGUSR1 \
         to reopen the access log)"
    );
    Asked::Carry
}

/// Ends the process (status 0) once every access-log line and log record
/// written so far is out.
pub fn exit_flushed(live: &Live) -> ! {
    let shared = live.current();
    shared.flush_access_log();
    shared.flush_traces();
    log::logger().flush();
    std::process::exit(0)
}

fn exit_now() -> ! {
    log::warn!("SIGINT: exiting now");
    log::logger().flush();
    std::process::exit(0)
}

/// Exits the process if it is still running `deadline` from now: a stop that
/// hangs (a task that never yields) must not keep the process, and its logs, alive.
fn exit_after(deadline: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".to_owned())
        .spawn(move || {
            std::thread::sleep(deadline);
            log::error!("shutdown did not finish within {deadline:?}; exiting anyway");
            log::logger().flush();
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the shutdown watchdog: {e}");
    }
}
