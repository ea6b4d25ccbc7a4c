//! The spans a request records: plain data, encoded as OTLP protobuf on the
//! exporter thread, so recording costs a few small writes. Strings the config
//! owns are shared ([`Value::Shared`]) and addresses kept as numbers
//! ([`Value::Ip`]): the request path copies no text it can point to.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    /// A name the config owns (a pool, a route, an endpoint): shared, not copied.
    Shared(Arc<str>),
    /// An address, written out as text on the exporter thread.
    Ip(IpAddr),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(v: &'static str) -> Value {
        Value::Str(Cow::Borrowed(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(Cow::Owned(v))
    }
}

impl From<Arc<str>> for Value {
    fn from(v: Arc<str>) -> Value {
        Value::Shared(v)
    }
}

impl From<IpAddr> for Value {
    fn from(v: IpAddr) -> Value {
        Value::Ip(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

pub type Attributes = Vec<(&'static str, Value)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub time_unix_ns: u64,
    pub attributes: Attributes,
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
    pub attributes: Attributes,
    pub events: Vec<Event>,
    /// Set when the span failed: the OTLP status `ERROR` with this message.
    pub error: Option<Cow<'static, str>>,
}

impl SpanRecord {
    pub fn new(span_id: u64, parent_span_id: u64, start_unix_ns: u64, attributes: usize) -> Self {
        SpanRecord {
            span_id,
            parent_span_id,
            start_unix_ns,
            end_unix_ns: 0,
            attributes: Vec::with_capacity(attributes),
            events: Vec::new(),
            error: None,
        }
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push((key, value.into()));
    }

    /// The value of attribute `key`, if set (the last one set wins).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// One request's spans, queued to the exporter as one message when the request
/// ends: the server span and a client span per upstream try (its children), with
/// what they share — the trace, its flags and state, and the name — kept once.
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
