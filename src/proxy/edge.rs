//! The HTTP edge: CORS preflights and headers, request size limits, the
//! route's header rules and the served-by header.

use filters::cors::Cors;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;

use super::{RequestCtx, TridentProxy};
use crate::config::{BodyLimits, HeaderRules};
use crate::protocol::grpc::GrpcCode;
use crate::protocol::http_path;
use crate::protocol::reply::ErrorReply;
use crate::protocol::Protocol;
use crate::telemetry::request_id;

/// The bytes of a request header as limits count them: the request line (or
/// the pseudo-headers) and every name and value.
fn header_bytes(header: &RequestHeader) -> usize {
    let fields: usize = header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let uri = &header.uri;
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    header.method.as_str().len() + authority + path + fields
}

/// The answer to a request header over `server.max_request_header_bytes`.
pub(super) fn header_too_large(header: &RequestHeader, max: usize) -> Option<ErrorReply> {
    let size = header_bytes(header);
    (size > max).then(|| {
        ErrorReply::new(
            431,
            GrpcCode::ResourceExhausted,
            format!("request header of {size} bytes is larger than the limit of {max} bytes"),
        )
    })
}

/// The answer to a request whose `Content-Length` is over the route's limit.
pub(super) fn body_too_large(declared: u64, limits: &BodyLimits) -> Option<ErrorReply> {
    let max = limits.max_request_bytes;
    (declared > max).then(|| too_large_body(declared, max))
}

fn too_large_body(size: u64, max: u64) -> ErrorReply {
    ErrorReply::new(
        413,
        GrpcCode::ResourceExhausted,
        format!("request body of {size} bytes is larger than the limit of {max} bytes"),
    )
}

/// Holds a request body to the route's limits as it streams, without keeping
/// any of it: an HTTP body's length, and each gRPC message's declared length.
#[derive(Debug, Clone)]
pub(super) struct BodyMeter {
    limits: BodyLimits,
    protocol: Protocol,
    /// HTTP: body bytes seen in this try.
    seen: u64,
    /// gRPC: bytes of the current message's payload still to come.
    payload_left: u64,
    /// gRPC: the current message's 5-byte prefix as far as read.
    prefix: [u8; 5],
    prefix_len: usize,
}

impl BodyMeter {
    pub fn new(limits: BodyLimits, protocol: Protocol) -> Self {
        BodyMeter {
            limits,
            protocol,
            seen: 0,
            payload_left: 0,
            prefix: [0; 5],
            prefix_len: 0,
        }
    }

    /// A retry replays the body from its start.
    pub fn reset(&mut self) {
        *self = BodyMeter::new(self.limits, self.protocol);
    }

    /// Counts `chunk`; the refusal once the body goes over a limit.
    pub fn feed(&mut self, chunk: &[u8]) -> std::result::Result<(), ErrorReply> {
        match self.protocol {
            Protocol::Http => {
                self.seen += chunk.len() as u64;
                let max = self.limits.max_request_bytes;
                if self.seen > max {
                    return Err(too_large_body(self.seen, max));
                }
                Ok(())
            }
            Protocol::Grpc => self.feed_grpc(chunk),
        }
    }

    fn feed_grpc(&mut self, mut chunk: &[u8]) -> std::result::Result<(), ErrorReply> {
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(chunk.len() as u64);
                self.payload_left -= skipped;
                chunk = &chunk[skipped as usize..];
                continue;
            }
            let wanted = 5 - self.prefix_len;
            let taken = wanted.min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&chunk[..taken]);
            self.prefix_len += taken;
            chunk = &chunk[taken..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                let max = self.limits.max_grpc_message_bytes;
                if u64::from(length) > max {
                    // grpc-core's words, which clients already know.
                    return Err(ErrorReply::new(
                        413,
                        GrpcCode::ResourceExhausted,
                        format!("Received message larger than max ({length} vs. {max})"),
                    ));
                }
                self.payload_left = u64::from(length);
            }
        }
        Ok(())
    }
}

impl TridentProxy {
    /// Answers a CORS preflight to a route with a `cors` filter: 204 with the
    /// allow headers, or 403 when its origin, method or headers are not
    /// allowed; never forwarded, and before any filter (a preflight carries no
    /// credentials). Whether it answered; other requests go on.
    pub(super) async fn answer_preflight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let header = session.req_header();
        if self.protocol != Protocol::Http || !Cors::is_preflight(&header.method, &header.headers) {
            return Ok(false);
        }
        let shared = ctx.shared.clone();
        let model = http_path::model_from_path(header.uri.path());
        let Some(route) = shared.config.routes.lookup(model.as_deref()) else {
            return Ok(false);
        };
        let Some(cors) = &shared.chains[route].cors else {
            return Ok(false);
        };
        ctx.model = model.map(|m| m.into_owned());
        ctx.route = Some(route);
        match cors.preflight(&session.req_header().headers) {
            Ok(headers) => {
                let mut answer = ResponseHeader::build(204, Some(headers.len() + 1))?;
                answer.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
                for (name, value) in headers {
                    answer.append_header(name, value)?;
                }
                session
                    .write_response_header(Box::new(answer), true)
                    .await?;
            }
            Err(refusal) => {
                let reply = ErrorReply::new(403, GrpcCode::PermissionDenied, refusal.message());
                self.answer_before_body(session, ctx, reply).await;
            }
        }
        Ok(true)
    }
}

/// Applies `[routes.headers]` to the request sent upstream.
pub(super) fn rewrite_request(rules: &HeaderRules, request: &mut RequestHeader) -> Result<()> {
    for name in &rules.request_remove {
        request.remove_header(name);
    }
    for (name, value) in &rules.request_set {
        request.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Applies `[routes.headers]` to an upstream answer, and names the endpoint
/// that answered in `served_by`.
pub(super) fn rewrite_response(
    rules: &HeaderRules,
    served_by: Option<(&http::HeaderName, &str)>,
    response: &mut ResponseHeader,
) -> Result<()> {
    for name in &rules.response_remove {
        response.remove_header(name);
    }
    for (name, value) in &rules.response_set {
        response.insert_header(name.clone(), value.clone())?;
    }
    if let Some((name, endpoint)) = served_by {
        if let Ok(value) = HeaderValue::from_str(endpoint) {
            response.insert_header(name.clone(), value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        max_request_bytes: 10,
        max_grpc_message_bytes: 4,
    };

    fn message(len: u32) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend(std::iter::repeat_n(7, len as usize));
        framed
    }

    #[test]
    fn an_http_body_is_cut_past_its_limit_across_chunks() {
        let mut meter = BodyMeter::new(LIMITS, Protocol::Http);
        assert!(meter.feed(&[0; 6]).is_ok());
        assert!(meter.feed(&[0; 4]).is_ok());
        let refused = meter.feed(&[0; 1]).unwrap_err();
        assert_eq!(refused.http_status, 413);
        meter.reset();
        assert!(meter.feed(&[0; 10]).is_ok());
    }

    #[test]
    fn a_grpc_message_over_the_limit_is_refused_wherever_its_prefix_splits() {
        let mut stream = message(4);
        stream.extend(message(0));
        stream.extend(message(3));
        stream.extend(message(5));
        for split in 0..stream.len() {
            let mut meter = BodyMeter::new(LIMITS, Protocol::Grpc);
            let first = meter.feed(&stream[..split]);
            let refused = first
                .and_then(|()| meter.feed(&stream[split..]))
                .unwrap_err();
            assert_eq!(refused.grpc_code, GrpcCode::ResourceExhausted);
            assert_eq!(
                refused.message,
                "Received message larger than max (5 vs. 4)"
            );
        }
        let mut meter = BodyMeter::new(LIMITS, Protocol::Grpc);
        // The HTTP limit does not bound a gRPC stream: its messages may add up to more.
        for _ in 0..10 {
            assert!(meter.feed(&message(4)).is_ok());
        }
    }

    #[test]
    fn header_size_counts_the_request_line_and_fields() {
        let mut header = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
        header.insert_header("x-big", "a".repeat(100)).unwrap();
        let size = header_bytes(&header);
        assert_eq!(size, 4 + 18 + 5 + 100);
        assert!(header_too_large(&header, size).is_none());
        assert_eq!(
            header_too_large(&header, size - 1).unwrap().http_status,
            431
        );
    }
}
