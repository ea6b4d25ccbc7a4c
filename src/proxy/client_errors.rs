//! Requests that break HTTP itself, refused before routing as the client's error.

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use crate::protocol::grpc::GrpcCode;
use crate::protocol::reply::ErrorReply;

/// RFC 9112 §3.2: an HTTP/1.1 request carries a `Host` (HTTP/1.0 may leave it
/// out; HTTP/2 has `:authority`). Pingora itself refuses several.
pub(super) fn host_error(header: &RequestHeader) -> Option<ErrorReply> {
    (header.version == http::Version::HTTP_11 && !header.headers.contains_key(http::header::HOST))
        .then(|| {
            ErrorReply::new(
                400,
                GrpcCode::InvalidArgument,
                "an HTTP/1.1 request must carry a Host header",
            )
        })
}

/// A body cut short of its `Content-Length` by a client that half-closed its
/// side: Pingora reports the connection closed, yet the client still reads
/// the answer.
pub(super) fn body_cut_short(session: &Session, e: &Error) -> Option<ErrorReply> {
    if e.esource() != &ErrorSource::Downstream
        || e.etype() != &ErrorType::ConnectionClosed
        || session.response_written().is_some()
    {
        return None;
    }
    let declared = super::body_length(session.req_header())?;
    let read = session.as_downstream().body_bytes_read();
    (read < declared).then(|| {
        ErrorReply::new(
            400,
            GrpcCode::InvalidArgument,
            format!("the request body ended after {read} of the {declared} bytes its Content-Length declares"),
        )
    })
}
