//! The paths under test: straight to the backend, or through Trident, nginx
//! or haproxy, each started with the same number of worker threads and tuned
//! as its documentation recommends for a keep-alive reverse proxy.

use std::net::SocketAddr;
use std::process::Command;

use crate::process::ProxyProcess;
use crate::system::free_port;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Trident,
    Nginx,
    Haproxy,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::Direct, Path::Trident, Path::Nginx, Path::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Trident => "trident",
            Path::Nginx => "nginx",
            Path::Haproxy => "haproxy",
        }
    }

    pub fn parse(name: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The program this path needs, when it is not built by this workspace.
    pub fn program(self) -> Option<&'static str> {
        match self {
            Path::Nginx => Some("nginx"),
            Path::Haproxy => Some("haproxy"),
            Path::Direct | Path::Trident => None,
        }
    }
}

/// The backend's listeners.
#[derive(Clone, Copy)]
pub struct Backend {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// A path ready for load: where to send HTTP and gRPC, and the proxy process
/// (none for `direct`), stopped on drop.
pub struct Running {
    pub path: Path,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    proxy: Option<ProxyProcess>,
}

impl Running {
    /// The proxy's processes (nginx: master and workers); empty for `direct`.
    pub fn pids(&self) -> Vec<u32> {
        self.proxy
            .as_ref()
            .map_or_else(Vec::new, ProxyProcess::pids)
    }
}

pub fn start(path: Path, backend: Backend, threads: usize, trident: &str) -> Running {
    if path == Path::Direct {
        return Running {
            path,
            http: backend.http,
            grpc: backend.grpc,
            proxy: None,
        };
    }
    let (http, grpc) = (free_port(), free_port());
    let proxy = match path {
        Path::Trident => ProxyProcess::start(
            path.name(),
            |_| trident_config(http, grpc, backend, threads),
            |_, config| {
                let mut c = Command::new(trident);
                c.args(["run", "--config"]).arg(config);
                c
            },
            http,
            grpc,
        ),
        Path::Nginx => ProxyProcess::start(
            path.name(),
            |dir| nginx_config(http, grpc, backend, threads, dir),
            |dir, config| {
                let mut c = Command::new("nginx");
                c.arg("-p").arg(dir).arg("-c").arg(config);
                c.arg("-e").arg(dir.join("error.log"));
                c
            },
            http,
            grpc,
        ),
        Path::Haproxy => ProxyProcess::start(
            path.name(),
            |_| haproxy_config(http, grpc, backend, threads),
            |_, config| {
                let mut c = Command::new("haproxy");
                c.arg("-db").arg("-f").arg(config);
                c
            },
            http,
            grpc,
        ),
        Path::Direct => unreachable!("handled above"),
    };
    Running {
        path,
        http,
        grpc,
        proxy: Some(proxy),
    }
}

fn trident_config(http: SocketAddr, grpc: SocketAddr, backend: Backend, threads: usize) -> String {
    format!(
        r#"[server]
http_listen = "{http}"
grpc_listen = "{grpc}"
threads = {threads}
access_log = "off"
drain_delay_secs = 0
shutdown_timeout_secs = 1

[[pools]]
name = "backend"
endpoints = [ {{ http = "{}", grpc = "{}" }} ]

[[routes]]
model = "*"
pool = "backend"
"#,
        backend.http, backend.grpc
    )
}

/// nginx as its docs advise for an upstream keep-alive proxy (`proxy_http_version
/// 1.1`, an empty `Connection` header, `keepalive` in the upstream block) and
/// `grpc_pass` for gRPC. Request caps are lifted so no run reconnects midway.
fn nginx_config(
    http: SocketAddr,
    grpc: SocketAddr,
    backend: Backend,
    threads: usize,
    dir: &std::path::Path,
) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes {threads};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 0;
    keepalive_requests 100000000;
    upstream http_backend {{ server {}; keepalive 64; keepalive_requests 100000000; }}
    upstream grpc_backend {{ server {}; keepalive 64; keepalive_requests 100000000; }}
    server {{
        listen {http};
        location / {{
            proxy_pass http://http_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen {grpc} http2;
        location / {{ grpc_pass grpc://grpc_backend; }}
    }}
}}
"#,
        backend.http, backend.grpc
    )
}

/// haproxy with `http-reuse always` and h2 to the gRPC backend.
fn haproxy_config(http: SocketAddr, grpc: SocketAddr, backend: Backend, threads: usize) -> String {
    format!(
        r#"global
    nbthread {threads}
    maxconn 8000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always

frontend http_in
    bind {http}
    default_backend http_backend

frontend grpc_in
    bind {grpc} proto h2
    default_backend grpc_backend

backend http_backend
    server backend {}

backend grpc_backend
    server backend {} proto h2
"#,
        backend.http, backend.grpc
    )
}
