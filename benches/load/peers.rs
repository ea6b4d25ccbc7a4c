//! The paths under test: straight to the backend, or through stock Pingora,
//! Trident, nginx or haproxy, every proxy started in the same [`Setting`] and
//! tuned as its documentation recommends for a keep-alive reverse proxy.
//! In the `tls` setting the proxies' listeners speak TLS with one certificate
//! ([`Certificate`]), to the same plaintext backend: TLS 1.3 only where the
//! proxy lets it be set (all but stock Pingora, which offers 1.2 too; every
//! client here picks 1.3).

use std::net::SocketAddr;
use std::process::Command;

use crate::pingora;
use crate::process::{write_config, ProxyProcess};
use crate::system::free_port;
use crate::tls::Certificate;
use crate::tools::{self, Call, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Pingora,
    Trident,
    Nginx,
    Haproxy,
}

impl Path {
    pub const ALL: [Path; 5] = [
        Path::Direct,
        Path::Pingora,
        Path::Trident,
        Path::Nginx,
        Path::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Pingora => "pingora",
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
            Path::Direct | Path::Pingora | Path::Trident => None,
        }
    }

    /// Why the path does not run in the `tls` setting, if it does not.
    pub fn no_tls(self) -> Option<&'static str> {
        match self {
            Path::Direct => Some("the backend speaks no TLS"),
            Path::Pingora | Path::Trident | Path::Nginx | Path::Haproxy => None,
        }
    }
}

/// How every proxy of a round of runs is configured: how many workers it has
/// and whether it logs each request, so that each figure compares like with like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// 1 worker per proxy, access logs off.
    Lean,
    /// Workers = CPUs, access logs off: how each proxy scales with threads.
    LeanCpus,
    /// 1 worker, every proxy (but stock Pingora, which has none) logging each
    /// request to a file: what an access log costs.
    Logged,
    /// Workers = CPUs and logs on, with Trident's config leaving both to its
    /// defaults: the configuration users run.
    Defaults,
    /// As `lean` (1 worker, logs off), with both listeners of every proxy
    /// speaking TLS 1.3, one ECDSA P-256 certificate for all; besides the
    /// kept-alive runs, full handshakes per second.
    Tls,
    /// As `lean`, with Trident tracing every request (`sample_ratio = 1.0`) to an
    /// OTLP/gRPC sink in the harness: against `lean`, what tracing costs. The
    /// other proxies run as in `lean`.
    Tracing,
    /// As `tracing`, sampling none (`sample_ratio = 0.0`): every request gets its
    /// context, sampling decision and upstream `traceparent`, nothing is exported —
    /// what tracing costs the requests it does not sample.
    TracingUnsampled,
}

impl Setting {
    pub const ALL: [Setting; 7] = [
        Setting::Lean,
        Setting::LeanCpus,
        Setting::Logged,
        Setting::Defaults,
        Setting::Tls,
        Setting::Tracing,
        Setting::TracingUnsampled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Setting::Lean => "lean",
            Setting::LeanCpus => "lean-cpus",
            Setting::Logged => "logged",
            Setting::Defaults => "defaults",
            Setting::Tls => "tls",
            Setting::Tracing => "tracing",
            Setting::TracingUnsampled => "tracing-unsampled",
        }
    }

    pub fn parse(name: &str) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Worker threads (nginx: worker processes) of every proxy.
    pub fn workers(self) -> usize {
        match self {
            Setting::Lean
            | Setting::Logged
            | Setting::Tls
            | Setting::Tracing
            | Setting::TracingUnsampled => 1,
            Setting::LeanCpus | Setting::Defaults => {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
        }
    }

    pub fn logs(self) -> bool {
        matches!(self, Setting::Logged | Setting::Defaults)
    }

    pub fn tls(self) -> bool {
        self == Setting::Tls
    }

    /// Whether Trident runs with `[tracing]`, exporting to the harness's sink.
    pub fn traced(self) -> bool {
        matches!(self, Setting::Tracing | Setting::TracingUnsampled)
    }

    /// The setting in a few words, for the report.
    pub fn describe(self) -> String {
        let workers = match self.workers() {
            1 => "1 worker".to_owned(),
            n => format!("{n} workers (= CPUs)"),
        };
        let logs = match self {
            Setting::Defaults => {
                "access logs on; Trident's config leaves threads and access log to its defaults"
            }
            Setting::Logged => "access logs on",
            Setting::Lean | Setting::LeanCpus => "access logs off",
            Setting::Tls => {
                "access logs off, TLS 1.3 on both listeners (one ECDSA P-256 certificate)"
            }
            Setting::Tracing => {
                "access logs off, Trident tracing every request to an OTLP/gRPC sink"
            }
            Setting::TracingUnsampled => "access logs off, Trident tracing on, sampling no request",
        };
        format!("{workers} per proxy, {logs}")
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
    /// Whether both listeners speak TLS.
    pub tls: bool,
    proxy: Option<ProxyProcess>,
}

impl Running {
    pub fn http_target(&self) -> Target {
        Target {
            addr: self.http,
            tls: self.tls,
        }
    }

    pub fn grpc_target(&self) -> Target {
        Target {
            addr: self.grpc,
            tls: self.tls,
        }
    }

    /// The proxy's processes (nginx: master and workers); empty for `direct`.
    pub fn pids(&self) -> Vec<u32> {
        self.proxy
            .as_ref()
            .map_or_else(Vec::new, ProxyProcess::pids)
    }
}

/// Starts `path` in `setting`; `trident` is the Trident binary to run, `tls`
/// the certificate every proxy serves (needed in the `tls` setting),
/// `trace_sink` the OTLP/gRPC sink Trident exports to (in the `tracing` setting).
pub fn start(
    path: Path,
    backend: Backend,
    setting: Setting,
    trident: &str,
    tls: Option<&Certificate>,
    trace_sink: Option<SocketAddr>,
) -> Running {
    let tls = setting.tls().then(|| {
        assert!(path.no_tls().is_none(), "{} has no TLS path", path.name());
        tls.expect("the tls setting needs a certificate")
    });
    if path == Path::Direct {
        return Running {
            path,
            http: backend.http,
            grpc: backend.grpc,
            tls: false,
            proxy: None,
        };
    }
    let (http, grpc) = (free_port(), free_port());
    let command = |dir: &std::path::Path| match path {
        Path::Pingora => pingora::command(http, grpc, backend, setting.workers(), tls),
        Path::Trident => {
            let sink = trace_sink.filter(|_| setting.traced());
            let config = trident_config(http, grpc, backend, setting, tls, sink);
            let config = write_config(dir, &config);
            let mut c = Command::new(trident);
            c.args(["run", "--config"]).arg(config);
            c
        }
        Path::Nginx => {
            let config = write_config(dir, &nginx_config(http, grpc, backend, setting, dir, tls));
            let mut c = Command::new("nginx");
            c.arg("-p").arg(dir).arg("-c").arg(config);
            c.arg("-e").arg(dir.join("error.log"));
            c
        }
        Path::Haproxy => {
            let config = write_config(dir, &haproxy_config(http, grpc, backend, setting, tls));
            let mut c = Command::new("haproxy");
            c.arg("-db").arg("-f").arg(config);
            c
        }
        Path::Direct => unreachable!("handled above"),
    };
    let proxy = match tls {
        None => ProxyProcess::start(path.name(), command, http, grpc),
        // Ready once a readiness call over TLS succeeds and gRPC accepts.
        Some(_) => ProxyProcess::start_until(path.name(), command, || {
            let ready = Call {
                h1: true,
                path: "/v2/health/ready",
                body: None,
            };
            let target = Target {
                addr: http,
                tls: true,
            };
            tools::tls_probe(target, ready).is_ok() && std::net::TcpStream::connect(grpc).is_ok()
        }),
    };
    Running {
        path,
        http,
        grpc,
        tls: tls.is_some(),
        proxy: Some(proxy),
    }
}

/// Trident's access log, when on, is its default: JSON lines on stdout (a file here).
/// With `tls`, a `[server.tls]` for both listeners, TLS 1.3 only; with
/// `trace_sink`, a `[tracing]` section sampling every request.
fn trident_config(
    http: SocketAddr,
    grpc: SocketAddr,
    backend: Backend,
    setting: Setting,
    tls: Option<&Certificate>,
    trace_sink: Option<SocketAddr>,
) -> String {
    let threads = match setting {
        Setting::Defaults => String::new(),
        _ => format!("threads = {}\n", setting.workers()),
    };
    let access_log = if setting.logs() {
        ""
    } else {
        "access_log = \"off\"\n"
    };
    let tls = tls.map_or_else(String::new, |c| {
        format!(
            "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nmin_version = \"1.3\"\n",
            c.cert.display(),
            c.key.display()
        )
    });
    let ratio = if setting == Setting::TracingUnsampled {
        "0.0"
    } else {
        "1.0"
    };
    let tracing = trace_sink.map_or_else(String::new, |sink| {
        format!("\n[tracing]\nendpoint = \"http://{sink}\"\nsample_ratio = {ratio}\n")
    });
    format!(
        r#"[server]
http_listen = "{http}"
grpc_listen = "{grpc}"
{threads}{access_log}drain_delay_secs = 0
shutdown_timeout_secs = 1
{tls}
[[pools]]
name = "backend"
endpoints = [ {{ http = "{}", grpc = "{}" }} ]

[[routes]]
model = "*"
pool = "backend"
{tracing}"#,
        backend.http, backend.grpc
    )
}

/// nginx as its docs advise for an upstream keep-alive proxy (`proxy_http_version
/// 1.1`, an empty `Connection` header, `keepalive` in the upstream block) and
/// `grpc_pass` for gRPC. Request caps are lifted so no run reconnects midway.
/// Its access log, when on, is buffered as its docs advise for a busy server.
/// With `tls`, both listeners take `ssl` and `http2` (ALPN h2 and http/1.1),
/// TLS 1.3 only.
fn nginx_config(
    http: SocketAddr,
    grpc: SocketAddr,
    backend: Backend,
    setting: Setting,
    dir: &std::path::Path,
    tls: Option<&Certificate>,
) -> String {
    let dir = dir.display();
    let (http_listen, grpc_listen, certificate) = match tls {
        None => (http.to_string(), format!("{grpc} http2"), String::new()),
        Some(c) => (
            format!("{http} ssl http2"),
            format!("{grpc} ssl http2"),
            format!(
                "ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    ",
                c.cert.display(),
                c.key.display()
            ),
        ),
    };
    let workers = setting.workers();
    let access_log = if setting.logs() {
        format!("{dir}/access.log combined buffer=64k flush=1s")
    } else {
        "off".to_owned()
    };
    format!(
        r#"worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log {access_log};
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 0;
    keepalive_requests 100000000;
    {certificate}upstream http_backend {{ server {}; keepalive 64; keepalive_requests 100000000; }}
    upstream grpc_backend {{ server {}; keepalive 64; keepalive_requests 100000000; }}
    server {{
        listen {http_listen};
        location / {{
            proxy_pass http://http_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen {grpc_listen};
        location / {{ grpc_pass grpc://grpc_backend; }}
    }}
}}
"#,
        backend.http, backend.grpc
    )
}

/// haproxy with `http-reuse always` and h2 to the gRPC backend. Its access log,
/// when on, is `option httplog` written to stdout (a file here), the way its
/// docs give for logging without a syslog server. With `tls`, both binds take
/// `ssl crt` with ALPN (h2 and http/1.1 for HTTP, h2 for gRPC), TLS 1.3 only,
/// choosing the cipher in the client's order.
fn haproxy_config(
    http: SocketAddr,
    grpc: SocketAddr,
    backend: Backend,
    setting: Setting,
    tls: Option<&Certificate>,
) -> String {
    let (http_bind, grpc_bind) = match tls {
        None => (http.to_string(), format!("{grpc} proto h2")),
        Some(c) => {
            // The client's cipher order, as nginx and rustls follow by default.
            let ssl = format!(
                "ssl crt {} ssl-min-ver TLSv1.3 prefer-client-ciphers",
                c.cert_and_key.display()
            );
            (
                format!("{http} {ssl} alpn h2,http/1.1"),
                format!("{grpc} {ssl} alpn h2"),
            )
        }
    };
    let workers = setting.workers();
    let (global_log, defaults_log) = if setting.logs() {
        (
            "    log stdout format raw local0\n",
            "    log global\n    option httplog\n",
        )
    } else {
        ("", "")
    };
    format!(
        r#"global
    nbthread {workers}
    maxconn 8000
{global_log}
defaults
    mode http
{defaults_log}    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always

frontend http_in
    bind {http_bind}
    default_backend http_backend

frontend grpc_in
    bind {grpc_bind}
    default_backend grpc_backend

backend http_backend
    server backend {}

backend grpc_backend
    server backend {} proto h2
"#,
        backend.http, backend.grpc
    )
}
