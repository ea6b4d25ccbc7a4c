//! An in-process OpenTelemetry collector for the tracing tests: OTLP/gRPC
//! (opentelemetry-proto's `TraceServiceServer`) and OTLP/HTTP protobuf
//! (`POST /v1/traces`) on free loopback ports, keeping every span it gets and
//! the request headers (metadata) it came with; and a "collector" that accepts
//! connections and never answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// OTLP span kinds.
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
/// OTLP status code `ERROR`.
pub const ERROR: i32 = 2;

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    /// `service.name` of each export request.
    services: Vec<String>,
    /// The request headers (gRPC metadata) of each export request.
    headers: Vec<http::HeaderMap>,
}

pub struct Collector {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    received: Arc<Mutex<Received>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn record(
    received: &Mutex<Received>,
    headers: http::HeaderMap,
    request: ExportTraceServiceRequest,
) {
    let mut received = received.lock().unwrap();
    received.headers.push(headers);
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        received.services.push(service);
        for scope in resource_spans.scope_spans {
            received.spans.extend(scope.spans);
        }
    }
}

struct GrpcReceiver(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        record(&self.0, headers, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    pub async fn start() -> Collector {
        let received = Arc::new(Mutex::new(Received::default()));
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            .expect("bind the OTLP/gRPC receiver");
        let grpc = incoming.local_addr().unwrap();
        let service = TraceServiceServer::new(GrpcReceiver(received.clone()));
        let grpc_task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let store = received.clone();
        let http_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let store = store.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let status = match ExportTraceServiceRequest::decode(body) {
                                    Ok(decoded) if parts.uri.path() == "/v1/traces" => {
                                        record(&store, parts.headers, decoded);
                                        200
                                    }
                                    _ => 400,
                                };
                                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                                Ok::<_, hyper::Error>(
                                    http::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(Bytes::from(answer)))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            grpc,
            http,
            received,
            tasks: vec![grpc_task, http_task],
        }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    pub fn services(&self) -> Vec<String> {
        self.received.lock().unwrap().services.clone()
    }

    pub fn request_headers(&self) -> Vec<http::HeaderMap> {
        self.received.lock().unwrap().headers.clone()
    }

    /// The spans of trace `trace_id` once `count` of them arrived (10 s at most).
    pub async fn trace(&self, trace_id: &[u8], count: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} spans of the trace arrived: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A "collector" that accepts connections and never reads or answers.
pub struct Silent {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Silent { addr, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The string, int or bool value of attribute `key`, as text.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            _ => None,
        })
}

/// 16 bytes of a 32-hex-digit trace id.
pub fn trace_id_bytes(hex: &str) -> Vec<u8> {
    u128::from_str_radix(hex, 16)
        .unwrap()
        .to_be_bytes()
        .to_vec()
}

/// 8 bytes of a 16-hex-digit span id.
pub fn span_id_bytes(hex: &str) -> Vec<u8> {
    u64::from_str_radix(hex, 16).unwrap().to_be_bytes().to_vec()
}
