//! Assembles the Pingora server: the proxy's worker threads, each serving every
//! listener, plus admin.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::TcpKeepalive;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{Config, ConnectionLimits};
use crate::connection::{ConnectionApp, OpenConnections};
use crate::protocol::Protocol;
use crate::proxy::TridentProxy;
use crate::reload::Live;
use crate::shutdown::{Lifecycle, Signals};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::workers::Workers;

/// Per-stream and per-connection h2 flow-control windows for clients: large
/// tensors need far more than h2's 64 KiB default in flight.
const H2_STREAM_WINDOW: u32 = 8 << 20;
const H2_CONNECTION_WINDOW: u32 = 32 << 20;
/// Kept at h2's default on purpose: the gRPC model-name peek relies on frames
/// this small (see `proxy::GRPC_PEEK_LIMIT`).
const H2_MAX_FRAME: u32 = 16 << 10;

/// Probes after `tcp_keepalive_secs`: a dead client is found within 50 s more.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_PROBES: usize = 5;

fn h2_options() -> H2Options {
    let mut options = default_h2_options();
    options.initial_window_size(H2_STREAM_WINDOW);
    options.initial_connection_window_size(H2_CONNECTION_WINDOW);
    options.max_frame_size(H2_MAX_FRAME);
    options
}

/// Fails early, with the address, if a listener cannot be bound (Pingora itself
/// would panic in a service thread).
fn check_bindable(config: &Config) -> Result<(), String> {
    let server = &config.server;
    let listeners = [
        ("http_listen", server.http_listen),
        ("grpc_listen", server.grpc_listen),
        ("admin_listen", server.admin_listen),
    ];
    for (key, addr) in listeners {
        if let Some(addr) = addr {
            TcpListener::bind(addr)
                .map_err(|e| format!("server.{key}: cannot listen on {addr}: {e}"))?;
        }
    }
    Ok(())
}

/// How the process starts.
pub struct Start {
    /// The config file, read again on reload; `None` for `trident demo`.
    pub config_path: Option<PathBuf>,
    /// Take the listening sockets from the process running now (`trident run
    /// --upgrade`), which hands them over on SIGQUIT.
    pub upgrade: bool,
}

/// Pingora's wait for runtimes to end once the shutdown timeout is over: by
/// then every request still running is cut anyway.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Serves `config` until the process is told to stop (see [`crate::shutdown`]).
/// Only returns on a start-up error.
pub fn run(config: Config, start: Start) -> Result<(), String> {
    let upgrade_socket = crate::upgrade::socket_path(config.server.upgrade_socket.as_deref())?;
    if !start.upgrade {
        check_bindable(&config)?;
    }
    let conf = ServerConf {
        threads: config.server.threads,
        // One single-threaded runtime per worker thread: a connection's tasks
        // never wake a task on another thread. Work stealing cost ~20% more
        // CPU per proxied request (cross-thread wake-ups, `cargo bench --bench load`).
        work_stealing: false,
        // Pingora's grace period is the most the drain waits for in-flight
        // requests; `shutdown::Signals` exits sooner once none is left.
        grace_period_seconds: Some(config.server.shutdown_timeout.as_secs()),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN.as_secs()),
        upgrade_sock: upgrade_socket.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let options = Opt {
        upgrade: start.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(options), conf);
    if start.upgrade {
        log::warn!(
            "upgrade: waiting at {} for the running Trident's listeners (send it SIGQUIT)",
            upgrade_socket.display()
        );
    }
    server.bootstrap();

    let metrics = Arc::new(Metrics::new());
    let access_log = AccessLog::start(
        &config.server.access_log.target,
        metrics.access_log_dropped.clone(),
    )?;
    let listeners = [
        (Protocol::Http, config.server.http_listen),
        (Protocol::Grpc, config.server.grpc_listen),
    ];
    let server_settings = config.server.clone();
    let limits = config.server.connections;
    let open = OpenConnections::new(
        limits.max_connections,
        metrics.downstream_connections.clone(),
    );
    let lifecycle = Lifecycle::new();
    let live = Live::start(config, start.config_path, metrics.clone(), access_log)
        .map_err(|e| format!("starting the proxy state (TLS, health checks): {e}"))?;

    // Each worker thread serves every listener with proxies of its own (see
    // `crate::workers` for why not Pingora's own worker threads).
    let workers = (0..server_settings.threads)
        .map(|_| {
            listeners
                .iter()
                .filter_map(|&(protocol, addr)| Some((protocol, addr?)))
                .map(|(protocol, addr)| {
                    let mut proxy = http_proxy(
                        &server.configuration,
                        TridentProxy::new(live.clone(), lifecycle.clone(), protocol),
                    );
                    proxy.h2_options = Some(h2_options());
                    let app = ConnectionApp::new(
                        proxy,
                        protocol,
                        live.tls.clone(),
                        limits,
                        open.clone(),
                        metrics.downstream(protocol.label()),
                        lifecycle.clone(),
                    );
                    let mut service = Service::new(format!("trident-{}", protocol.label()), app);
                    service.add_listener(client_listener(addr, &limits));
                    service
                })
                .collect()
        })
        .collect();
    server.add_service(Workers::new("trident-worker".to_owned(), workers));
    if let Some(addr) = server_settings.admin_listen {
        let mut admin = Service::new(
            "trident-admin".to_owned(),
            Admin::new(live.clone(), lifecycle.clone()),
        );
        admin.add_tcp(&addr.to_string());
        admin.threads = Some(1);
        server.add_service(admin);
    }
    log_listeners(&server_settings, start.upgrade);
    let phases = server.watch_execution_phase();
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            lifecycle,
            live: live.clone(),
            open,
            drain_delay: server_settings.drain_delay,
            shutdown_timeout: server_settings.shutdown_timeout,
            phases: std::sync::Mutex::new(Some(phases)),
        }),
    });
    // The shutdown timeout ended with requests still running: the runtimes are
    // gone, and with them those requests, each logged and counted as cut.
    let cut = metrics.requests_cut.get();
    if cut > 0 {
        log::error!(
            "shutdown timeout ({:?}) over: {cut} request(s) still running were cut",
            server_settings.shutdown_timeout
        );
    }
    crate::shutdown::exit_flushed(&live)
}

/// Says, at the default log level, which version serves on which addresses:
/// the line operators look for first after a start or an upgrade.
fn log_listeners(server: &crate::config::Server, upgrade: bool) {
    log::info!(
        "trident {} starting (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let tls = server.tls.as_ref();
    let listeners = [
        ("http", server.http_listen, tls.is_some_and(|t| t.on_http)),
        ("grpc", server.grpc_listen, tls.is_some_and(|t| t.on_grpc)),
        ("admin", server.admin_listen, false),
    ];
    let how = if upgrade {
        ", taken over from the previous process"
    } else {
        ""
    };
    for (name, addr, tls) in listeners {
        if let Some(addr) = addr {
            let security = if tls { "TLS" } else { "plain text" };
            log::info!("listening on {name} {addr} ({security}{how})");
        }
    }
}

/// TCP keepalive on client connections, so the kernel finds dead peers (h2
/// clients included: Pingora's h2 server sends no PING).
fn socket_options(limits: &ConnectionLimits) -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.tcp_keepalive = limits.tcp_keepalive.map(|idle| TcpKeepalive {
        idle,
        interval: TCP_KEEPALIVE_INTERVAL,
        count: TCP_KEEPALIVE_PROBES,
        #[cfg(target_os = "linux")]
        user_timeout: Duration::ZERO,
    });
    options
}

/// Client connections read straight into the HTTP codecs' own buffers, without
/// Pingora's default 64 KiB L4 read buffer per connection: tokio zero-fills it,
/// so once the allocator reuses memory every open connection keeps all of it
/// resident (1,000 idle connections: 51, 91 then 104 MiB of RSS over three
/// rounds of `cargo bench --bench soak`; 42 MiB in every round without it).
/// The codecs read in chunks of their own, so it saved no system calls.
const CLIENT_READ_BUFFER: usize = 0;

/// A proxy listener: TCP keepalive as configured, no L4 read buffer.
fn client_listener(addr: SocketAddr, limits: &ConnectionLimits) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string())
        .tcp_socket_options(socket_options(limits))
        .l4_buffer(L4BufferSettings::default().read(CLIENT_READ_BUFFER))
}
