//! The OTLP/gRPC collector Trident exports to in the `tracing` settings: it
//! reads every export and answers that it took it, decoding nothing, on a
//! thread of its own. The run measures Trident's side of tracing (recording,
//! encoding, sending); a collector runs elsewhere in production, and decoding
//! each span here would take CPU from the proxy and the backend on this machine.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An `ExportTraceServiceResponse` with nothing in it, as a gRPC message:
/// uncompressed, length 0.
const EMPTY_RESPONSE: &[u8] = &[0, 0, 0, 0, 0];

/// Serves the sink on a loopback port, on a thread of its own.
pub fn start() -> SocketAddr {
    let listener =
        std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind the sink");
    let addr = listener.local_addr().expect("the sink's address");
    listener
        .set_nonblocking(true)
        .expect("a nonblocking listener");
    std::thread::Builder::new()
        .name("trace-sink".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the sink's runtime");
            runtime.block_on(serve(listener));
        })
        .expect("the sink's thread");
    addr
}

async fn serve(listener: std::net::TcpListener) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(export))
                .await;
        });
    }
}

/// The answer's body: the message, then the trailers.
type Answer =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Reads the export (dropping it as it arrives) and answers OK.
async fn export(request: Request<Incoming>) -> Result<Response<Answer>, hyper::Error> {
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(EMPTY_RESPONSE))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}
