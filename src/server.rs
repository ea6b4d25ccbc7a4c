//! Assembles the Pingora server: one proxy service per listener, plus admin.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::Config;
use crate::protocol::Protocol;
use crate::proxy::{Shared, TridentProxy};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;

/// Per-stream and per-connection h2 flow-control windows for clients: large
/// tensors need far more than h2's 64 KiB default in flight.
const H2_STREAM_WINDOW: u32 = 8 << 20;
const H2_CONNECTION_WINDOW: u32 = 32 << 20;
/// Kept at h2's default on purpose: the gRPC model-name peek relies on frames
/// this small (see `proxy::GRPC_PEEK_LIMIT`).
const H2_MAX_FRAME: u32 = 16 << 10;

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

/// Serves `config` until the process is told to stop. Only returns on a start-up error.
pub fn run(config: Config) -> Result<(), String> {
    check_bindable(&config)?;
    let conf = ServerConf {
        threads: config.server.threads,
        // One single-threaded runtime per worker thread: a connection's tasks
        // never wake a task on another thread. Work stealing cost ~20% more
        // CPU per proxied request (cross-thread wake-ups, `cargo bench --bench load`).
        work_stealing: false,
        grace_period_seconds: Some(config.server.shutdown_grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new());
    let access_log = AccessLog::start(config.server.access_log, metrics.access_log_dropped.clone())
        .map_err(|e| format!("starting the access log writer: {e}"))?;
    let listeners = [
        (Protocol::Http, config.server.http_listen),
        (Protocol::Grpc, config.server.grpc_listen),
    ];
    let admin_listen = config.server.admin_listen;
    let shared = Arc::new(Shared::new(config, metrics, access_log));
    crate::upstream::start_background(shared.pools.clone(), shared.metrics.clone())
        .map_err(|e| format!("starting health checks: {e}"))?;

    for (protocol, addr) in listeners {
        let Some(addr) = addr else { continue };
        let name = format!("trident-{}", protocol.label());
        let mut service = http_proxy_service_with_name(
            &server.configuration,
            TridentProxy::new(shared.clone(), protocol),
            &name,
        );
        add_listener(&mut service, addr);
        if let Some(proxy) = service.app_logic_mut() {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            proxy.server_options = Some(options);
            proxy.h2_options = Some(h2_options());
        }
        server.add_service(service);
    }
    if let Some(addr) = admin_listen {
        let mut admin = Service::new("trident-admin".to_owned(), Admin::new(shared));
        add_listener(&mut admin, addr);
        admin.threads = Some(1);
        server.add_service(admin);
    }
    server.run_forever()
}

/// Client connections read straight into the HTTP codecs' own buffers, without
/// Pingora's default 64 KiB L4 read buffer per connection: tokio zero-fills it,
/// so once the allocator reuses memory every open connection keeps all of it
/// resident (1,000 idle connections: 51, 91 then 104 MiB of RSS over three
/// rounds of `cargo bench --bench soak`; 42 MiB in every round without it).
/// The codecs read in chunks of their own, so it saved no system calls.
const CLIENT_READ_BUFFER: usize = 0;

fn add_listener<A>(service: &mut Service<A>, addr: SocketAddr) {
    let buffers = L4BufferSettings::default().read(CLIENT_READ_BUFFER);
    service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
}
