//! `trident demo`: Trident in front of a few in-process mock Triton servers,
//! so a newcomer sees it route real KServe-v2 traffic with nothing else installed.

use std::net::SocketAddr;

use crate::config;
use crate::mock::{MockConfig, MockTriton};

/// Where the demo's Trident listens.
pub struct DemoListeners {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// The demo's mock servers: two replicas serving the vision models, one the language model.
const MOCKS: [(&str, &[&str]); 3] = [
    ("vision-1", &["resnet50", "densenet_onnx", "simple"]),
    ("vision-2", &["resnet50", "densenet_onnx", "simple"]),
    ("language-1", &["bert"]),
];

/// Starts the mocks and serves Trident in front of them until interrupted;
/// `start_logging` configures the error log from the demo's config.
pub fn run(
    listeners: DemoListeners,
    start_logging: impl FnOnce(&config::LogSettings),
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo-mock")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the mock servers' runtime: {e}"))?;
    let mocks = runtime
        .block_on(async {
            let mut mocks = Vec::new();
            for (name, models) in MOCKS {
                let models = models.iter().map(|m| m.to_string()).collect();
                mocks.push(
                    MockTriton::start(MockConfig {
                        name: name.to_owned(),
                        models,
                    })
                    .await?,
                );
            }
            Ok::<_, std::io::Error>(mocks)
        })
        .map_err(|e| format!("starting the mock servers: {e}"))?;

    let toml = demo_config(&listeners, &mocks);
    let config = config::parse(&toml, std::path::Path::new("."))
        .map_err(|e| format!("demo config is invalid (a bug):\n{e}"))?;
    start_logging(&config.log);
    println!("{}", banner(&listeners, &toml));
    // The runtime (and the mocks on it) must outlive the server, which never returns on success.
    let result = crate::server::run(
        config,
        crate::server::Start {
            config_path: None,
            upgrade: false,
        },
    );
    drop(mocks);
    drop(runtime);
    result
}

fn endpoint(mock: &MockTriton) -> String {
    format!(
        "{{ http = \"{}\", grpc = \"{}\" }}",
        mock.http_addr, mock.grpc_addr
    )
}

fn demo_config(listeners: &DemoListeners, mocks: &[MockTriton]) -> String {
    format!(
        r#"[server]
http_listen  = "{http}"
grpc_listen  = "{grpc}"
admin_listen = "{admin}"
threads = 1

[[pools]]
name = "vision"
endpoints = [ {vision1}, {vision2} ]

[[pools]]
name = "language"
endpoints = [ {language} ]

[[routes]]
model = "bert"
pool  = "language"

[[routes]]
model = "*"
pool  = "vision"
"#,
        http = listeners.http,
        grpc = listeners.grpc,
        admin = listeners.admin,
        vision1 = endpoint(&mocks[0]),
        vision2 = endpoint(&mocks[1]),
        language = endpoint(&mocks[2]),
    )
}

fn banner(listeners: &DemoListeners, toml: &str) -> String {
    let http = listeners.http;
    format!(
        r#"Trident demo: three mock Triton servers (identity models) behind Trident.

  tritonclient.http -> http://{http}
  tritonclient.grpc -> {grpc}
  metrics           -> http://{admin}/metrics

Try (the x-mock-backend response header names the replica that answered):
  curl -si http://{http}/v2/models/resnet50/infer -d '{{"inputs":[{{"name":"INPUT0","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}}]}}'
  curl -si http://{http}/v2/models/bert/infer -d '{{"inputs":[{{"name":"INPUT0","datatype":"INT32","shape":[2],"data":[7,8]}}]}}'
  curl -si http://{http}/v2/health/ready

The config it runs (write your own like it; check it with `trident check --config FILE`):

{toml}
One JSON access-log line per request follows. Ctrl-C stops.
"#,
        grpc = listeners.grpc,
        admin = listeners.admin,
    )
}
