//! The request's spans (see [`crate::telemetry::trace`]): begun with the
//! request, a client span per try (in [`super::tries`]), and ended in
//! `logging` with the semantic-convention attributes and Trident's own.

use std::borrow::Cow;
use std::time::Instant;

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::{RequestCtx, TridentProxy};
use crate::protocol::grpc::CODE_NAMES;
use crate::protocol::Protocol;
use crate::telemetry::metrics::Outcome;
use crate::telemetry::trace::span::{AsText, SpanRecord};
use crate::telemetry::trace::{context as trace_context, names, RequestTrace};
use crate::upstream::{Pool, TryOutcome};

impl TridentProxy {
    /// Starts the request's trace; with tracing off, notes the client's trace id only.
    pub(super) fn begin_trace(&self, header: &RequestHeader, ctx: &mut RequestCtx) {
        let Some(tracer) = &ctx.shared.tracer else {
            ctx.client_trace_id = header
                .headers
                .get(&trace_context::TRACEPARENT)
                .and_then(|v| trace_context::parse_traceparent(v.as_bytes()))
                .map(|c| trace_context::TraceId(c.trace_id));
            return;
        };
        let protocol = self.protocol;
        ctx.trace = Some(tracer.begin(&header.headers, ctx.started, |name| {
            let path = header.uri.path();
            match protocol {
                Protocol::Http => names::http_span_name(name, header.method.as_str(), path),
                Protocol::Grpc => names::grpc_span_name(name, path),
            }
        }));
    }

    /// Ends the request's spans at `ended`: attributes from what the request
    /// went through, an error status on a 5xx, a non-OK gRPC status or no response.
    pub(super) fn end_trace(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        outcome: Outcome,
        ended: Instant,
    ) {
        let (Some(tracer), Some(trace)) = (ctx.shared.tracer.as_deref(), ctx.trace.as_mut()) else {
            return;
        };
        let error = match outcome {
            Outcome::Http(code) if code >= 500 => Some(Cow::Owned(format!("HTTP {code}"))),
            Outcome::Grpc(code) if code != 0 => {
                Some(CODE_NAMES.get(usize::from(code)).map_or_else(
                    || Cow::Owned(format!("gRPC status {code}")),
                    |name| Cow::Borrowed(*name),
                ))
            }
            Outcome::NoResponse => Some(Cow::Borrowed("no response")),
            _ => None,
        };
        if let Some(span) = trace.server_span() {
            set_request(span, session, self.protocol, outcome);
            let shared = &ctx.shared;
            if let Some(model) = &ctx.model {
                span.set("trident.model", model.as_str());
            }
            if let Some(route) = ctx.route {
                let target = shared.config.routes.target(route);
                span.set("trident.route", &*target.key);
                let side = ctx
                    .split_side
                    .and_then(|i| target.split.as_ref()?.sides.get(i));
                if let Some(side) = side {
                    span.set("trident.split_side", &*side.label);
                }
            }
            if let Some(pool) = shared.pool(ctx.pool) {
                span.set("trident.pool", &*pool.name);
            }
            span.set("trident.mirror", ctx.mirror.is_some());
            if let Some(control) = &ctx.sequence {
                span.set("trident.sequence_id", AsText(&control.id));
            }
            span.set("trident.request_id", ctx.request_id.as_str());
            span.set("trident.tries", i64::from(ctx.tries));
        }
        trace.end(tracer, error, ended);
    }
}

/// The semantic conventions' request attributes of a server span.
fn set_request(span: &mut SpanRecord, session: &Session, protocol: Protocol, outcome: Outcome) {
    let header = session.req_header();
    let headers = &header.headers;
    let text = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let authority = header
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| text(&http::header::HOST));
    if let Some((host, port)) = authority.and_then(host_and_port) {
        span.set("server.address", host);
        if let Some(port) = port {
            span.set("server.port", i64::from(port));
        }
    }
    if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
        span.set("client.address", client.ip());
    }
    let version = match header.version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    span.set("network.protocol.version", version);
    if let Some(agent) = text(&http::header::USER_AGENT) {
        span.set("user_agent.original", agent);
    }
    match protocol {
        Protocol::Http => {
            span.set("http.request.method", header.method.as_str());
            span.set("url.path", header.uri.path());
            if let Outcome::Http(code) = outcome {
                span.set("http.response.status_code", i64::from(code));
            }
        }
        Protocol::Grpc => {
            span.set("rpc.system", "grpc");
            if let Some((service, method)) = names::grpc_method(header.uri.path()) {
                span.set("rpc.service", service);
                span.set("rpc.method", method);
            }
            if let Outcome::Grpc(code) = outcome {
                span.set("rpc.grpc.status_code", i64::from(code));
            }
        }
    }
}

/// The host and port of an authority (`host`, `host:port`, `[v6]:port`, after
/// any `userinfo@`), read in place (`http::uri::Authority` copies the text to
/// parse it); `None` for what is not one.
fn host_and_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => (host, Some(port.parse().ok()?)),
        _ => (authority, None),
    };
    let literal = host.starts_with('[') && host.ends_with(']');
    let plain = !host.is_empty()
        && (literal || !host.contains(':'))
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@'));
    plain.then_some((host, port))
}

/// Starts a try's client span at `at`, with the endpoint it goes to.
pub(super) fn start_try(
    trace: &mut RequestTrace,
    pool: &Pool,
    endpoint: usize,
    address: Option<std::net::SocketAddr>,
    try_number: u32,
    at: Instant,
) {
    trace.start_try(at);
    let Some(span) = trace.try_span() else {
        return;
    };
    if let Some(address) = address {
        span.set("server.address", address.ip());
        span.set("server.port", i64::from(address.port()));
    }
    if let Some(endpoint) = pool.endpoints.get(endpoint) {
        span.set("trident.endpoint", &*endpoint.label);
    }
    span.set("trident.pool", &*pool.name);
    span.set("trident.try", i64::from(try_number));
}

/// Ends a try's client span at `at`, failed unless the try succeeded.
pub(super) fn end_try(trace: &mut RequestTrace, outcome: TryOutcome, at: Instant) {
    let name = outcome.name();
    if let Some(span) = trace.try_span() {
        span.set("trident.try.outcome", name);
    }
    let error = (outcome != TryOutcome::Success).then_some(Cow::Borrowed(name));
    trace.end_try(error, at);
}

#[cfg(test)]
mod tests {
    use super::host_and_port;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(host_and_port("triton"), Some(("triton", None)));
        assert_eq!(host_and_port("triton:8000"), Some(("triton", Some(8000))));
        assert_eq!(
            host_and_port("10.0.0.5:8001"),
            Some(("10.0.0.5", Some(8001)))
        );
        assert_eq!(host_and_port("[::1]:8000"), Some(("[::1]", Some(8000))));
        assert_eq!(host_and_port("[::1]"), Some(("[::1]", None)));
        assert_eq!(host_and_port("user@triton:80"), Some(("triton", Some(80))));
    }

    #[test]
    fn what_is_not_an_authority_gives_none() {
        for odd in [
            "",
            ":80",
            "triton:",
            "triton:99999",
            "triton:x",
            "::1",
            "a b",
            "a/b:1",
        ] {
            assert_eq!(host_and_port(odd), None, "{odd:?}");
        }
    }
}
