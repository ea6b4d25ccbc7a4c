//! OTLP protobuf, written field by field (opentelemetry-proto's `trace.proto`
//! and `collector/trace/v1/trace_service.proto`). Spans are written on the
//! request's thread as its attributes are set and when it ends
//! ([`write_request`]: `ScopeSpans.spans` fields, ready to be concatenated);
//! the exporter thread only puts the envelope around them
//! ([`Envelope::export_request`]). Building the generated message types instead
//! would copy every attribute key and value into a `String` of its own, per span.

use std::io::Write as _;

use bytes::BufMut;
use prost::encoding::{encoded_len_varint, key_len, WireType};

use super::span::{AttributeValue, RequestSpans, SpanRecord};

/// OTLP's `SpanKind` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// OTLP's `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;
/// OTLP span flags: the W3C trace flags, and whether the parent is remote.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

/// `Span.attributes`.
pub const SPAN_ATTRIBUTES: u32 = 9;
/// `AnyValue`'s `string_value`, `bool_value` and `int_value`.
pub const ANY_VALUE_STRING: u32 = 1;
pub const ANY_VALUE_BOOL: u32 = 2;
pub const ANY_VALUE_INT: u32 = 3;
/// `ScopeSpans.spans`: what [`write_request`] writes.
const SCOPE_SPANS_SPANS: u32 = 2;

/// What every export request repeats around the spans.
pub struct Envelope {
    /// The `Resource` message's body (`service.name`).
    resource: Vec<u8>,
    /// The `InstrumentationScope` message's body (Trident, its version).
    scope: Vec<u8>,
}

impl Envelope {
    pub fn new(service_name: &str) -> Envelope {
        let mut resource = Vec::new();
        attribute(&mut resource, 1, "service.name", &service_name, usize::MAX);
        let mut scope = Vec::new();
        string(&mut scope, 1, "trident");
        string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
        Envelope { resource, scope }
    }

    /// The lengths of the `ResourceSpans` and `ScopeSpans` around `spans` bytes of spans.
    fn lengths(&self, spans: usize) -> (usize, usize) {
        let scope_spans = field_len(1, self.scope.len()) + spans;
        let resource_spans = field_len(1, self.resource.len()) + field_len(2, scope_spans);
        (resource_spans, scope_spans)
    }

    /// The length of the export request of `chunks`.
    pub fn request_len(&self, chunks: &[impl AsRef<[u8]>]) -> usize {
        field_len(1, self.lengths(total_len(chunks)).0)
    }

    /// The most bytes of spans an export request of at most `max` bytes carries.
    pub fn room_for_spans(&self, max: usize) -> usize {
        // What goes around the spans grows with them (their lengths' varints):
        // around `max` bytes it is at least what it is around fewer.
        let around = field_len(1, self.lengths(max).0) - max;
        max.saturating_sub(around)
    }

    /// Writes one `ExportTraceServiceRequest` carrying the spans `chunks` hold
    /// (as [`write_request`] wrote them) into `dst`. Lengths are known up
    /// front, so the spans are copied once, into place.
    pub fn export_request(&self, chunks: &[impl AsRef<[u8]>], dst: &mut impl BufMut) {
        let (resource_spans, scope_spans) = self.lengths(total_len(chunks));
        let mut head = Vec::with_capacity(32 + self.resource.len() + self.scope.len());
        // ExportTraceServiceRequest.resource_spans
        header(&mut head, 1, resource_spans);
        // ResourceSpans.resource
        bytes(&mut head, 1, &self.resource);
        // ResourceSpans.scope_spans
        header(&mut head, 2, scope_spans);
        // ScopeSpans.scope
        bytes(&mut head, 1, &self.scope);
        dst.put_slice(&head);
        for chunk in chunks {
            dst.put_slice(chunk.as_ref());
        }
    }
}

fn total_len(chunks: &[impl AsRef<[u8]>]) -> usize {
    chunks.iter().map(|c| c.as_ref().len()).sum()
}

/// A request's spans, each as a `ScopeSpans.spans` field.
pub fn write_request(buf: &mut Vec<u8>, request: &RequestSpans) {
    write_span(buf, request, &request.server, KIND_SERVER);
    for try_span in &request.tries {
        write_span(buf, request, try_span, KIND_CLIENT);
    }
}

fn write_span(buf: &mut Vec<u8>, request: &RequestSpans, span: &SpanRecord, kind: u64) {
    let (attributes, events) = span.encoded();
    let status = span.error.as_deref().map_or(0, |message| {
        field_len(2, message.len()) + key_len(3) + encoded_len_varint(STATUS_ERROR)
    });
    // The span's length is known before it is written: no room to make afterwards.
    let len = field_len(1, 16)
        + field_len(2, 8)
        + request
            .trace_state
            .as_ref()
            .map_or(0, |state| field_len(3, state.len()))
        + if span.parent_span_id != 0 {
            field_len(4, 8)
        } else {
            0
        }
        + field_len(5, request.name.len())
        + key_len(6)
        + encoded_len_varint(kind)
        + key_len(7)
        + 8
        + key_len(8)
        + 8
        + attributes.len()
        + events.len()
        + field_len(15, status)
        + key_len(16)
        + 4;
    header(buf, SCOPE_SPANS_SPANS, len);
    let start = buf.len();
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
    // Span.attributes (9) and Span.events (11), encoded as they were set.
    buf.extend_from_slice(attributes);
    buf.extend_from_slice(events);
    header(buf, 15, status);
    if let Some(message) = &span.error {
        string(buf, 2, message);
        varint(buf, 3, STATUS_ERROR);
    }
    // Only the server span can have a remote parent: a try's is the server span.
    let remote = match kind {
        KIND_SERVER if request.remote_parent => FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE,
        _ => FLAGS_HAS_IS_REMOTE,
    };
    key(buf, 16, WireType::ThirtyTwoBit);
    buf.extend_from_slice(&(u32::from(request.flags) | remote).to_le_bytes());
    debug_assert_eq!(buf.len() - start, len, "the span's length as computed");
}

/// A `KeyValue` in field `tag`. This and the writers below run for every
/// attribute of every sampled span, so they are inlined: a call each per key,
/// length and byte was a tenth of the sampled request's tracing work.
///
/// When the value's length is known (text, numbers, IPv4 addresses: all but
/// rare attributes), the lengths are written first and the vector grown once.
/// Text values are cut to `max_text` bytes.
#[inline]
pub fn attribute<V: AttributeValue + ?Sized>(
    buf: &mut Vec<u8>,
    tag: u32,
    key: &str,
    value: &V,
    max_text: usize,
) {
    let Some(value_len) = value.any_value_len(max_text) else {
        return nested(buf, tag, |buf| {
            string(buf, 1, key);
            // KeyValue.value: AnyValue, a oneof: written even when it is a zero.
            nested(buf, 2, |buf| value.write_any_value(buf, max_text));
        });
    };
    let key_value_len = field_len(1, key.len()) + field_len(2, value_len);
    buf.reserve(field_len(tag, key_value_len));
    header(buf, tag, key_value_len);
    string(buf, 1, key);
    header(buf, 2, value_len);
    value.write_any_value(buf, max_text);
}

/// A `Span.Event` with text attributes, cut to `max_text` bytes.
pub fn event(
    buf: &mut Vec<u8>,
    name: &str,
    time_unix_ns: u64,
    attributes: &[(&str, &str)],
    max_text: usize,
) {
    nested(buf, 11, |buf| {
        fixed64(buf, 1, time_unix_ns);
        string(buf, 2, name);
        for (key, value) in attributes {
            attribute(buf, 3, key, value, max_text);
        }
    });
}

/// `text`, or as much of it as fits in `max` bytes without splitting a character.
#[inline]
pub fn cut(text: &str, max: usize) -> &str {
    &text[..char_boundary(text.as_bytes(), max)]
}

/// The length of the longest prefix of UTF-8 `text` that is at most `max`
/// bytes and ends between characters. (`str::floor_char_boundary` does this
/// for a `str` but is newer than the crate's `rust-version`, 1.85; and
/// [`display`] cuts bytes it has just written, not a `str`.)
fn char_boundary(text: &[u8], max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    // A character's continuation bytes are 0b10xxxxxx: back up over them.
    (0..=max)
        .rev()
        .find(|&at| text[at] & 0xC0 != 0x80)
        .unwrap_or(0)
}

/// A length-delimited field `tag` whose body `body` writes. One byte is kept
/// for the length, enough for most fields; a longer body is moved up to make
/// room (once, by a few bytes), not written twice.
fn nested(buf: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, tag, WireType::LengthDelimited);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
        return;
    }
    let (prefix, written) = varint_bytes(len as u64);
    buf.splice(at..at + 1, prefix[..written].iter().copied());
}

/// A field's key.
#[inline]
fn key(buf: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    push_varint(buf, u64::from(tag << 3 | wire_type as u32));
}

/// A varint, appended to the vector directly (prost's `encode_varint` writes
/// byte by byte through `BufMut`, checking for room at each).
#[inline]
fn push_varint(buf: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        buf.push(value as u8);
        return;
    }
    let (bytes, written) = varint_bytes(value);
    buf.extend_from_slice(&bytes[..written]);
}

/// `value` as a varint: its bytes, and how many of them.
fn varint_bytes(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0; 10];
    let mut written = 0;
    while value >= 0x80 {
        bytes[written] = value as u8 | 0x80;
        value >>= 7;
        written += 1;
    }
    bytes[written] = value as u8;
    (bytes, written + 1)
}

/// A length-delimited field's key and length, its body to follow.
#[inline]
fn header(buf: &mut Vec<u8>, tag: u32, len: usize) {
    key(buf, tag, WireType::LengthDelimited);
    push_varint(buf, len as u64);
}

/// The bytes a length-delimited field with a body of `len` bytes takes.
#[inline]
pub fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The bytes a varint field holding `value` takes.
#[inline]
pub fn varint_field_len(tag: u32, value: u64) -> usize {
    key_len(tag) + encoded_len_varint(value)
}

#[inline]
fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    header(buf, tag, value.len());
    buf.extend_from_slice(value);
}

#[inline]
pub fn string(buf: &mut Vec<u8>, tag: u32, value: &str) {
    bytes(buf, tag, value.as_bytes());
}

/// A string field holding `value` written out, without a `String` in between,
/// cut to `max_text` bytes.
pub fn display(buf: &mut Vec<u8>, tag: u32, value: &dyn std::fmt::Display, max_text: usize) {
    nested(buf, tag, |buf| {
        let start = buf.len();
        // Writing to a vector cannot fail.
        let _ = write!(buf, "{value}");
        let kept = char_boundary(&buf[start..], max_text);
        buf.truncate(start + kept);
    });
}

/// A string field holding an IPv4 address in dotted decimal, written digit by
/// digit (`fmt` is several times slower, and a span has one or two addresses).
pub fn ipv4(buf: &mut Vec<u8>, tag: u32, address: std::net::Ipv4Addr) {
    header(buf, tag, ipv4_len(address));
    for (i, octet) in address.octets().into_iter().enumerate() {
        if i > 0 {
            buf.push(b'.');
        }
        if octet >= 100 {
            buf.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            buf.push(b'0' + octet / 10 % 10);
        }
        buf.push(b'0' + octet % 10);
    }
}

/// The length of an IPv4 address in dotted decimal.
pub fn ipv4_len(address: std::net::Ipv4Addr) -> usize {
    let digits = |octet: u8| 1 + usize::from(octet >= 10) + usize::from(octet >= 100);
    3 + address.octets().into_iter().map(digits).sum::<usize>()
}

#[inline]
pub fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    key(buf, tag, WireType::Varint);
    push_varint(buf, value);
}

#[inline]
fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    key(buf, tag, WireType::SixtyFourBit);
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
    use crate::telemetry::trace::span::AsText;

    fn request() -> Box<RequestSpans> {
        let mut server = SpanRecord::new(0xab, 7, 1_000, 8, usize::MAX);
        server.end_unix_ns = 5_000;
        server.set("http.response.status_code", 503i64);
        server.set("trident.tries", 0i64);
        server.set("trident.mirror", false);
        server.set(
            "client.address",
            "10.0.0.9".parse::<std::net::IpAddr>().unwrap(),
        );
        server.set("trident.pool", "resnet");
        server.set("trident.sequence_id", AsText(42u64));
        // Long enough that its length takes two bytes, and the span's three.
        server.set(
            "url.path",
            ("/v2/models/".to_owned() + &"m".repeat(200)).as_str(),
        );
        server.set("user_agent.original", "u".repeat(20_000).as_str());
        server.error = Some(Cow::Borrowed("HTTP 503"));
        server.event(
            "trident.filter.denied",
            2_000,
            &[
                ("trident.filter", "keys"),
                ("trident.filter.reason", "missing"),
            ],
        );
        let mut first = SpanRecord::new(0xc1, 0xab, 1_100, 2, usize::MAX);
        first.end_unix_ns = 2_100;
        first.set("server.address", "::1".parse::<std::net::IpAddr>().unwrap());
        let mut second = SpanRecord::new(0xc2, 0xab, 2_200, 2, usize::MAX);
        second.end_unix_ns = 4_900;
        Box::new(RequestSpans {
            trace_id: 0x0102030405060708090a0b0c0d0e0f10,
            flags: 1,
            remote_parent: true,
            trace_state: Some("v=1".into()),
            name: "POST /v2/models/{model}/infer".into(),
            server,
            tries: vec![first, second],
            kept_tries: Vec::new(),
        })
    }

    /// The export request of `requests`, each written into a chunk of its own.
    fn export(service: &str, requests: &[RequestSpans]) -> ExportTraceServiceRequest {
        let chunks: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| {
                let mut chunk = Vec::new();
                write_request(&mut chunk, r);
                chunk
            })
            .collect();
        let envelope = Envelope::new(service);
        let mut bytes = Vec::new();
        envelope.export_request(&chunks, &mut bytes);
        assert_eq!(bytes.len(), envelope.request_len(&chunks));
        ExportTraceServiceRequest::decode(&bytes[..]).unwrap()
    }

    fn value(span: &proto::Span, key: &str) -> any_value::Value {
        let kv = span.attributes.iter().find(|kv| kv.key == key).unwrap();
        kv.value.clone().unwrap().value.unwrap()
    }

    #[test]
    fn a_request_encodes_as_the_generated_types_decode_it() {
        let decoded = export("edge", &[*request(), *request()]);
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
        assert_eq!(
            value(server, "trident.sequence_id"),
            any_value::Value::StringValue("42".into())
        );
        assert!(
            matches!(value(server, "url.path"), any_value::Value::StringValue(p) if p.len() == 211)
        );
        assert!(
            matches!(value(server, "user_agent.original"), any_value::Value::StringValue(p) if p.len() == 20_000)
        );
        let event = &server.events[0];
        assert_eq!(event.name, "trident.filter.denied");
        assert_eq!(event.time_unix_nano, 2_000);
        let reason = &event.attributes[1];
        assert_eq!(reason.key, "trident.filter.reason");
        assert_eq!(
            reason.value.clone().unwrap().value.unwrap(),
            any_value::Value::StringValue("missing".into())
        );

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
    fn room_for_spans_keeps_the_export_request_within_its_bound() {
        let envelope = Envelope::new("trident");
        for max in [1 << 16, 1 << 20, (1 << 21) + 3, 64 << 20] {
            let room = envelope.room_for_spans(max);
            assert!(envelope.request_len(&[vec![0u8; room]]) <= max, "{max}");
            assert!(room > max - 64, "{max}: {room}");
        }
    }

    #[test]
    fn a_root_span_has_no_parent_id() {
        let mut root = request();
        root.server.parent_span_id = 0;
        root.remote_parent = false;
        root.trace_state = None;
        let decoded = export("trident", &[*root]);
        let server = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert!(server.parent_span_id.is_empty());
        assert!(server.trace_state.is_empty());
        assert_eq!(server.flags, 0x101);
    }

    #[test]
    fn text_values_are_cut_between_characters() {
        assert_eq!(cut("trident", 100), "trident");
        assert_eq!(cut("trident", 4), "trid");
        assert_eq!(cut("trident", 0), "");
        // "é" is two bytes, "€" three: a cut inside one keeps none of it.
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aéb", 3), "aé");
        assert_eq!(cut("€€", 5), "€");

        let mut span = SpanRecord::new(1, 0, 1, 8, 4);
        span.set("user_agent.original", "agent/1.0");
        span.set("trident.sequence_id", AsText("seq-é"));
        span.set("trident.tries", 123_456i64);
        span.set(
            "client.address",
            "2001:db8::1".parse::<std::net::IpAddr>().unwrap(),
        );
        span.event(
            "trident.filter.denied",
            2,
            &[("trident.filter", "keys-long")],
        );
        span.end_unix_ns = 2;
        let mut request = request();
        request.server = span;
        request.tries.clear();
        let decoded = export("trident", &[*request]);
        let server = &decoded.resource_spans[0].scope_spans[0].spans[0];
        let text = |key| match value(server, key) {
            any_value::Value::StringValue(text) => text,
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text("user_agent.original"), "agen");
        assert_eq!(text("trident.sequence_id"), "seq-", "not into the \"é\"");
        assert_eq!(text("client.address"), "2001:db8::1", "addresses are whole");
        assert_eq!(
            value(server, "trident.tries"),
            any_value::Value::IntValue(123_456)
        );
        let attribute = &server.events[0].attributes[0];
        assert_eq!(
            attribute.value.clone().unwrap().value.unwrap(),
            any_value::Value::StringValue("keys".into())
        );
    }

    #[test]
    fn addresses_and_varints_are_written_as_prost_and_fmt_write_them() {
        for text in [
            "0.0.0.0",
            "10.0.0.9",
            "127.0.0.1",
            "192.168.100.255",
            "8.80.108.1",
        ] {
            let mut buf = Vec::new();
            ipv4(&mut buf, 1, text.parse().unwrap());
            assert_eq!(&buf[2..], text.as_bytes());
            assert_eq!(usize::from(buf[1]), text.len());
            assert_eq!(ipv4_len(text.parse().unwrap()), text.len());
        }
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            push_varint(&mut ours, value);
            let mut prost = Vec::new();
            prost::encoding::encode_varint(value, &mut prost);
            assert_eq!(ours, prost, "{value}");
        }
    }
}
