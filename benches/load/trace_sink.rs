//! The OTLP/gRPC collector Trident exports to in the `tracing` setting: it
//! takes every batch and keeps nothing, so that the run measures Trident's
//! side of tracing (recording, queueing, encoding, sending), not a collector's.

use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        _spans: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the sink on a loopback port, on `runtime` (the backend's).
pub fn start(runtime: &tokio::runtime::Runtime) -> SocketAddr {
    let _context = runtime.enter();
    let incoming =
        TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind the trace sink");
    let addr = incoming.local_addr().expect("the sink's address");
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink))
            .serve_with_incoming(incoming),
    );
    addr
}
