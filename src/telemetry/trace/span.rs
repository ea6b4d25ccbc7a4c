//! The spans a request records. Attributes and events are written as OTLP
//! protobuf the moment they are set ([`super::encode`]): a span holds its
//! attributes as the bytes the collector gets, so recording copies each value
//! once, takes no shared reference (no atomic count on a config name), and the
//! request's thread frees what it allocated.

use std::borrow::Cow;
use std::net::IpAddr;

use super::encode;

/// A value an attribute can have, written as an OTLP `AnyValue` body.
pub trait AttributeValue {
    fn write_any_value(&self, buf: &mut Vec<u8>);
}

impl AttributeValue for &str {
    fn write_any_value(&self, buf: &mut Vec<u8>) {
        encode::string(buf, encode::ANY_VALUE_STRING, self);
    }
}

impl AttributeValue for i64 {
    fn write_any_value(&self, buf: &mut Vec<u8>) {
        encode::varint(buf, encode::ANY_VALUE_INT, *self as u64);
    }
}

impl AttributeValue for bool {
    fn write_any_value(&self, buf: &mut Vec<u8>) {
        encode::varint(buf, encode::ANY_VALUE_BOOL, u64::from(*self));
    }
}

/// An address, as its text.
impl AttributeValue for IpAddr {
    fn write_any_value(&self, buf: &mut Vec<u8>) {
        match self {
            IpAddr::V4(v4) => encode::ipv4(buf, encode::ANY_VALUE_STRING, *v4),
            IpAddr::V6(v6) => encode::display(buf, encode::ANY_VALUE_STRING, v6),
        }
    }
}

/// A number written out as text (a sequence id: an identifier, not a quantity).
pub struct AsText<T>(pub T);

impl<T: std::fmt::Display> AttributeValue for AsText<T> {
    fn write_any_value(&self, buf: &mut Vec<u8>) {
        encode::display(buf, encode::ANY_VALUE_STRING, &self.0);
    }
}

/// What one span has of its own; what the spans of a request share is in [`RequestSpans`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub span_id: u64,
    /// 0: a root span.
    pub parent_span_id: u64,
    pub start_unix_ns: u64,
    /// 0 while the span is open.
    pub end_unix_ns: u64,
    /// `Span.attributes`, encoded: a `KeyValue` field per attribute set.
    attributes: Vec<u8>,
    /// `Span.events`, encoded.
    events: Vec<u8>,
    /// Set when the span failed: the OTLP status `ERROR` with this message.
    pub error: Option<Cow<'static, str>>,
}

impl SpanRecord {
    /// A span with room for `attribute_bytes` of encoded attributes.
    pub fn new(
        span_id: u64,
        parent_span_id: u64,
        start_unix_ns: u64,
        attribute_bytes: usize,
    ) -> Self {
        SpanRecord {
            span_id,
            parent_span_id,
            start_unix_ns,
            end_unix_ns: 0,
            attributes: Vec::with_capacity(attribute_bytes),
            events: Vec::new(),
            error: None,
        }
    }

    pub fn set(&mut self, key: &str, value: impl AttributeValue) {
        encode::attribute(&mut self.attributes, encode::SPAN_ATTRIBUTES, key, &value);
    }

    /// Notes an event at `time_unix_ns`, with text attributes.
    pub fn event(&mut self, name: &str, time_unix_ns: u64, attributes: &[(&str, &str)]) {
        encode::event(&mut self.events, name, time_unix_ns, attributes);
    }

    /// The encoded attributes and events.
    pub(super) fn encoded(&self) -> (&[u8], &[u8]) {
        (&self.attributes, &self.events)
    }
}

/// One request's spans: the server span and a client span per upstream try
/// (its children), with what they share — the trace, its flags and state, and
/// the name — kept once. Encoded on the request's thread when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpans {
    pub trace_id: u128,
    pub flags: u8,
    /// Whether the server span's parent is another process's (a client's `traceparent`).
    pub remote_parent: bool,
    pub trace_state: Option<String>,
    pub name: Cow<'static, str>,
    pub server: SpanRecord,
    pub tries: Vec<SpanRecord>,
}

impl RequestSpans {
    /// The spans in it: the server span and its tries.
    pub fn span_count(&self) -> usize {
        1 + self.tries.len()
    }
}
