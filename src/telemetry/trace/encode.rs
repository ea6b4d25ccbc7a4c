//! OTLP protobuf, written straight from the request path's records: an
//! `ExportTraceServiceRequest` (opentelemetry-proto's `trace.proto` and
//! `collector/trace/v1/trace_service.proto`) encoded field by field into one
//! buffer. Building the generated message types first would copy every
//! attribute key and value into a `String` of its own, per span, on the
//! exporter thread; this writes each once.

use std::fmt::Write as _;

use prost::encoding::{encode_key, encode_varint, WireType};

use super::span::{Attributes, RequestSpans, SpanRecord, Value};

/// OTLP's `SpanKind` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// OTLP's `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;
/// OTLP span flags: the W3C trace flags, and whether the parent is remote.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

/// Encodes export requests; keeps what every request repeats.
pub struct Encoder {
    /// The `Resource` message's body (`service.name`).
    resource: Vec<u8>,
    /// Where addresses are written out before they are copied in.
    scratch: String,
}

impl Encoder {
    pub fn new(service_name: &str) -> Encoder {
        let mut resource = Vec::new();
        let attributes = vec![("service.name", Value::from(service_name.to_owned()))];
        let mut scratch = String::new();
        write_attributes(&mut resource, 1, &attributes, &mut scratch);
        Encoder { resource, scratch }
    }

    /// One `ExportTraceServiceRequest` carrying every span of `batch`.
    pub fn export_request(&mut self, batch: &[RequestSpans]) -> Vec<u8> {
        let spans: usize = batch.iter().map(|r| r.span_count()).sum();
        let mut buf = Vec::with_capacity(256 + spans * 512);
        // ExportTraceServiceRequest.resource_spans
        nested(&mut buf, 1, |buf| {
            // ResourceSpans.resource
            nested(buf, 1, |buf| buf.extend_from_slice(&self.resource));
            // ResourceSpans.scope_spans
            nested(buf, 2, |buf| {
                // ScopeSpans.scope: InstrumentationScope { name, version }
                nested(buf, 1, |buf| {
                    string(buf, 1, "trident");
                    string(buf, 2, env!("CARGO_PKG_VERSION"));
                });
                for request in batch {
                    write_span(
                        buf,
                        request,
                        &request.server,
                        KIND_SERVER,
                        &mut self.scratch,
                    );
                    for try_span in &request.tries {
                        write_span(buf, request, try_span, KIND_CLIENT, &mut self.scratch);
                    }
                }
            });
        });
        buf
    }
}

/// ScopeSpans.spans: one `Span`.
fn write_span(
    buf: &mut Vec<u8>,
    request: &RequestSpans,
    span: &SpanRecord,
    kind: u64,
    scratch: &mut String,
) {
    nested(buf, 2, |buf| {
        bytes(buf, 1, &request.trace_id.to_be_bytes());
        bytes(buf, 2, &span.span_id.to_be_bytes());
        if let Some(state) = &request.trace_state {
            string(buf, 3, state);
        }
        if span.parent_span_id != 0 {
            bytes(buf, 4, &span.parent_span_id.to_be_bytes());
        }
        string(buf, 5, &request.name);
        varint(buf, 6, kind);
        fixed64(buf, 7, span.start_unix_ns);
        fixed64(buf, 8, span.end_unix_ns);
        write_attributes(buf, 9, &span.attributes, scratch);
        for event in &span.events {
            nested(buf, 11, |buf| {
                fixed64(buf, 1, event.time_unix_ns);
                string(buf, 2, event.name);
                write_attributes(buf, 3, &event.attributes, scratch);
            });
        }
        nested(buf, 15, |buf| {
            if let Some(message) = &span.error {
                string(buf, 2, message);
                varint(buf, 3, STATUS_ERROR);
            }
        });
        // Only the server span can have a remote parent: a try's is the server span.
        let remote = match kind {
            KIND_SERVER if request.remote_parent => FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE,
            _ => FLAGS_HAS_IS_REMOTE,
        };
        encode_key(16, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&(u32::from(request.flags) | remote).to_le_bytes());
    });
}

/// Each attribute as a `KeyValue` in field `tag`.
fn write_attributes(buf: &mut Vec<u8>, tag: u32, attributes: &Attributes, scratch: &mut String) {
    for (key, value) in attributes {
        nested(buf, tag, |buf| {
            string(buf, 1, key);
            // KeyValue.value: AnyValue, a oneof: written even when it is a zero.
            nested(buf, 2, |buf| match value {
                Value::Str(s) => string(buf, 1, s),
                Value::Shared(s) => string(buf, 1, s),
                Value::Ip(ip) => {
                    scratch.clear();
                    let _ = write!(scratch, "{ip}");
                    string(buf, 1, scratch);
                }
                Value::Bool(b) => {
                    encode_key(2, WireType::Varint, buf);
                    encode_varint(u64::from(*b), buf);
                }
                Value::Int(i) => {
                    encode_key(3, WireType::Varint, buf);
                    encode_varint(*i as u64, buf);
                }
            });
        });
    }
}

/// A length-delimited field `tag` whose body `body` writes: the body goes first,
/// then its length is put in front (a memmove of a few bytes, not a second pass).
fn nested(buf: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    let start = buf.len();
    body(buf);
    let len = (buf.len() - start) as u64;
    let mut prefix = [0u8; 10];
    let mut slice = &mut prefix[..];
    encode_varint(len, &mut slice);
    let written = 10 - slice.len();
    buf.splice(start..start, prefix[..written].iter().copied());
}

fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

fn string(buf: &mut Vec<u8>, tag: u32, value: &str) {
    bytes(buf, tag, value.as_bytes());
}

fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1 as proto;
    use prost::Message as _;

    use super::*;
    use crate::telemetry::trace::span::Event;

    fn request() -> Box<RequestSpans> {
        let mut server = SpanRecord::new(0xab, 7, 1_000, 8);
        server.end_unix_ns = 5_000;
        server.set("http.response.status_code", 503i64);
        server.set("trident.tries", 0i64);
        server.set("trident.mirror", false);
        server.set(
            "client.address",
            "10.0.0.9".parse::<std::net::IpAddr>().unwrap(),
        );
        server.set("trident.pool", std::sync::Arc::<str>::from("resnet"));
        // Long enough that its length takes two bytes.
        server.set("url.path", "/v2/models/".to_owned() + &"m".repeat(200));
        server.error = Some(Cow::Borrowed("HTTP 503"));
        server.events.push(Event {
            name: "trident.filter.denied",
            time_unix_ns: 2_000,
            attributes: vec![("trident.filter", Value::from("keys"))],
        });
        let mut first = SpanRecord::new(0xc1, 0xab, 1_100, 2);
        first.end_unix_ns = 2_100;
        first.set("server.address", "::1".parse::<std::net::IpAddr>().unwrap());
        let mut second = SpanRecord::new(0xc2, 0xab, 2_200, 2);
        second.end_unix_ns = 4_900;
        Box::new(RequestSpans {
            trace_id: 0x0102030405060708090a0b0c0d0e0f10,
            flags: 1,
            remote_parent: true,
            trace_state: Some("v=1".into()),
            name: Cow::Borrowed("POST /v2/models/{model}/infer"),
            server,
            tries: vec![first, second],
        })
    }

    fn value(span: &proto::Span, key: &str) -> any_value::Value {
        let kv = span.attributes.iter().find(|kv| kv.key == key).unwrap();
        kv.value.clone().unwrap().value.unwrap()
    }

    #[test]
    fn a_request_encodes_as_the_generated_types_decode_it() {
        let mut encoder = Encoder::new("edge");
        let bytes = encoder.export_request(&[*request(), *request()]);
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let resource = &decoded.resource_spans[0];
        let service = &resource.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let scope = &resource.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "trident");
        assert_eq!(scope.spans.len(), 6, "two requests of three spans");
        let (server, first, second) = (&scope.spans[0], &scope.spans[1], &scope.spans[2]);

        assert_eq!(
            server.trace_id,
            0x0102030405060708090a0b0c0d0e0f10u128.to_be_bytes()
        );
        assert_eq!(server.span_id, 0xabu64.to_be_bytes());
        assert_eq!(server.parent_span_id, 7u64.to_be_bytes());
        assert_eq!(server.trace_state, "v=1");
        assert_eq!(server.name, "POST /v2/models/{model}/infer");
        assert_eq!(server.kind, proto::span::SpanKind::Server as i32);
        assert_eq!(
            (server.start_time_unix_nano, server.end_time_unix_nano),
            (1_000, 5_000)
        );
        assert_eq!(server.flags, 0x301, "sampled, with a remote parent");
        let status = server.status.as_ref().unwrap();
        assert_eq!(status.code, proto::status::StatusCode::Error as i32);
        assert_eq!(status.message, "HTTP 503");
        assert_eq!(
            value(server, "http.response.status_code"),
            any_value::Value::IntValue(503)
        );
        assert_eq!(
            value(server, "trident.tries"),
            any_value::Value::IntValue(0)
        );
        assert_eq!(
            value(server, "trident.mirror"),
            any_value::Value::BoolValue(false)
        );
        assert_eq!(
            value(server, "client.address"),
            any_value::Value::StringValue("10.0.0.9".into())
        );
        assert_eq!(
            value(server, "trident.pool"),
            any_value::Value::StringValue("resnet".into())
        );
        assert!(
            matches!(value(server, "url.path"), any_value::Value::StringValue(p) if p.len() == 211)
        );
        assert_eq!(server.events[0].name, "trident.filter.denied");
        assert_eq!(server.events[0].time_unix_nano, 2_000);

        for (try_span, id) in [(first, 0xc1u64), (second, 0xc2)] {
            assert_eq!(try_span.kind, proto::span::SpanKind::Client as i32);
            assert_eq!(try_span.span_id, id.to_be_bytes());
            assert_eq!(try_span.parent_span_id, 0xabu64.to_be_bytes());
            assert_eq!(try_span.trace_id, server.trace_id);
            assert_eq!(try_span.name, server.name);
            assert_eq!(try_span.flags, 0x101, "a try's parent is local");
            assert_eq!(try_span.status.as_ref().unwrap().code, 0);
        }
        assert_eq!(
            value(first, "server.address"),
            any_value::Value::StringValue("::1".into())
        );
    }

    #[test]
    fn a_root_span_has_no_parent_id() {
        let mut root = request();
        root.server.parent_span_id = 0;
        root.remote_parent = false;
        root.trace_state = None;
        let bytes = Encoder::new("trident").export_request(&[*root]);
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let server = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert!(server.parent_span_id.is_empty());
        assert!(server.trace_state.is_empty());
        assert_eq!(server.flags, 0x101);
    }
}
