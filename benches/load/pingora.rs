//! The `pingora` path: stock Pingora (the version Trident is built on) as a
//! bare pass-through `ProxyHttp`, with Pingora's defaults and no access log.
//! It is the floor under Trident's figures: how much of a request's cost is
//! Pingora's own. The harness runs it as a child process of its own binary,
//! started again with [`ROLE`] set, so that its CPU and memory are read apart
//! from the harness's, like every other proxy's. In the `tls` setting its
//! listeners speak TLS through Pingora's own rustls listener
//! (`TlsSettings::intermediate`: TLS 1.2 and 1.3 offered, 1.3 chosen by every
//! client here), with ALPN h2 and http/1.1 for HTTP, h2 for gRPC.

use std::net::SocketAddr;
use std::process::Command;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ALPN;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

use crate::peers::Backend;
use crate::tls::Certificate;

/// Set to `pingora` in the environment of the harness's binary to make it
/// serve as the pass-through instead of running the harness.
const ROLE: &str = "TRIDENT_LOAD_ROLE";

/// Concurrent calls on one upstream h2 connection: Trident's default
/// (`max_h2_streams`), so that both multiplex alike. Pingora's own default of
/// one would open a connection per call in flight.
const MAX_H2_STREAMS: usize = 128;

/// The command that starts the pass-through: HTTP/1.1 on `http` to the
/// backend's HTTP port, h2c on `grpc` to its gRPC port, with `threads` workers;
/// both over TLS with `tls`.
pub fn command(
    http: SocketAddr,
    grpc: SocketAddr,
    backend: Backend,
    threads: usize,
    tls: Option<&Certificate>,
) -> Command {
    let exe = std::env::current_exe().expect("the harness's own binary");
    let mut command = Command::new(exe);
    command.env(ROLE, "pingora").args([
        http.to_string(),
        grpc.to_string(),
        backend.http.to_string(),
        backend.grpc.to_string(),
        threads.to_string(),
    ]);
    if let Some(c) = tls {
        command.arg(&c.cert).arg(&c.key);
    }
    command
}

/// Serves as the pass-through, and never returns, when this process was
/// started by [`command`]; returns at once otherwise.
pub fn serve_if_asked() {
    if std::env::var(ROLE).as_deref() != Ok("pingora") {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (http, grpc, http_backend, grpc_backend, threads, tls) = match &args[..] {
        [http, grpc, http_backend, grpc_backend, threads] => {
            (http, grpc, http_backend, grpc_backend, threads, None)
        }
        [http, grpc, http_backend, grpc_backend, threads, cert, key] => (
            http,
            grpc,
            http_backend,
            grpc_backend,
            threads,
            Some((cert, key)),
        ),
        _ => panic!(
            "{ROLE}=pingora: expected http grpc http-backend grpc-backend threads [cert key], \
             got {args:?}"
        ),
    };
    let address = |a: &String| -> SocketAddr {
        a.parse()
            .unwrap_or_else(|e| panic!("{ROLE}=pingora: {a}: {e}"))
    };
    let conf = ServerConf {
        threads: threads
            .parse()
            .unwrap_or_else(|e| panic!("{ROLE}=pingora: threads {threads}: {e}")),
        // Stops at once on SIGTERM: there is nothing to drain between runs.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let listeners = [
        (http, PassThrough::Http1(address(http_backend))),
        (grpc, PassThrough::H2(address(grpc_backend))),
    ];
    for (listen, pass_through) in listeners {
        let h2 = matches!(pass_through, PassThrough::H2(_));
        let mut service = http_proxy_service(&server.configuration, pass_through);
        match tls {
            Some((cert, key)) => {
                let mut settings = TlsSettings::intermediate(cert, key)
                    .unwrap_or_else(|e| panic!("{ROLE}=pingora: {cert}, {key}: {e}"));
                settings.set_alpn(if h2 { ALPN::H2 } else { ALPN::H2H1 });
                service.add_tls_with_settings(listen, None, settings);
            }
            None => {
                if h2 {
                    let mut options = HttpServerOptions::default();
                    options.h2c = true;
                    if let Some(proxy) = service.app_logic_mut() {
                        proxy.server_options = Some(options);
                    }
                }
                service.add_tcp(listen);
            }
        }
        server.add_service(service);
    }
    server.run_forever()
}

/// Every request to one backend address, over HTTP/1.1 keep-alive or h2.
enum PassThrough {
    Http1(SocketAddr),
    H2(SocketAddr),
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let peer = match *self {
            PassThrough::Http1(backend) => HttpPeer::new(backend, false, String::new()),
            PassThrough::H2(backend) => {
                let mut peer = HttpPeer::new(backend, false, String::new());
                peer.options.set_http_version(2, 2);
                peer.options.max_h2_streams = MAX_H2_STREAMS;
                peer
            }
        };
        Ok(Box::new(peer))
    }
}
