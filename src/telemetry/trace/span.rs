//! The spans a request records. Attributes and events are written as OTLP
//! protobuf the moment they are set ([`super::encode`]): a span holds its
//! attributes as the bytes the collector gets, so recording copies each value
//! once, takes no shared reference (no atomic count on a config name), and the
//! request's thread frees what it allocated.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;

use super::encode;

/// A value an attribute can have, written as an OTLP `AnyValue` body. Text is
/// cut to at most `max_text` bytes (on a character boundary): clients choose
/// some of it (a path, a user agent), and a span must stay small.
pub trait AttributeValue {
    fn write_any_value(&self, buf: &mut Vec<u8>, max_text: usize);

    /// The length of what [`Self::write_any_value`] writes, when it is known
    /// without writing it: the attribute is then written in one pass, its
    /// lengths first (else they are fixed up afterwards).
    fn any_value_len(&self, _max_text: usize) -> Option<usize> {
        None
    }
}

impl AttributeValue for &str {
    fn write_any_value(&self, buf: &mut Vec<u8>, max_text: usize) {
        encode::string(buf, encode::ANY_VALUE_STRING, encode::cut(self, max_text));
    }

    fn any_value_len(&self, max_text: usize) -> Option<usize> {
        let len = encode::cut(self, max_text).len();
        Some(encode::field_len(encode::ANY_VALUE_STRING, len))
    }
}

impl AttributeValue for i64 {
    fn write_any_value(&self, buf: &mut Vec<u8>, _: usize) {
        encode::varint(buf, encode::ANY_VALUE_INT, *self as u64);
    }

    fn any_value_len(&self, _: usize) -> Option<usize> {
        Some(encode::varint_field_len(
            encode::ANY_VALUE_INT,
            *self as u64,
        ))
    }
}

impl AttributeValue for bool {
    fn write_any_value(&self, buf: &mut Vec<u8>, _: usize) {
        encode::varint(buf, encode::ANY_VALUE_BOOL, u64::from(*self));
    }

    fn any_value_len(&self, _: usize) -> Option<usize> {
        Some(encode::varint_field_len(
            encode::ANY_VALUE_BOOL,
            u64::from(*self),
        ))
    }
}

/// An address, as its text (never longer than 45 bytes: not cut).
impl AttributeValue for IpAddr {
    fn write_any_value(&self, buf: &mut Vec<u8>, _: usize) {
        match self {
            IpAddr::V4(v4) => encode::ipv4(buf, encode::ANY_VALUE_STRING, *v4),
            IpAddr::V6(v6) => encode::display(buf, encode::ANY_VALUE_STRING, v6, usize::MAX),
        }
    }

    fn any_value_len(&self, _: usize) -> Option<usize> {
        match self {
            IpAddr::V4(v4) => Some(encode::field_len(
                encode::ANY_VALUE_STRING,
                encode::ipv4_len(*v4),
            )),
            IpAddr::V6(_) => None,
        }
    }
}

/// A number written out as text (a sequence id: an identifier, not a quantity).
pub struct AsText<T>(pub T);

impl<T: std::fmt::Display> AttributeValue for AsText<T> {
    fn write_any_value(&self, buf: &mut Vec<u8>, max_text: usize) {
        encode::display(buf, encode::ANY_VALUE_STRING, &self.0, max_text);
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
    /// The longest text value of its attributes and events', in bytes.
    max_text: usize,
}

impl SpanRecord {
    /// A span with room for `attribute_bytes` of encoded attributes, its text
    /// values cut to `max_text` bytes.
    pub fn new(
        span_id: u64,
        parent_span_id: u64,
        start_unix_ns: u64,
        attribute_bytes: usize,
        max_text: usize,
    ) -> Self {
        SpanRecord {
            span_id,
            parent_span_id,
            start_unix_ns,
            end_unix_ns: 0,
            attributes: Vec::with_capacity(attribute_bytes),
            events: Vec::new(),
            error: None,
            max_text,
        }
    }

    pub fn set(&mut self, key: &str, value: impl AttributeValue) {
        encode::attribute(
            &mut self.attributes,
            encode::SPAN_ATTRIBUTES,
            key,
            &value,
            self.max_text,
        );
    }

    /// Notes an event at `time_unix_ns`, with text attributes.
    pub fn event(&mut self, name: &str, time_unix_ns: u64, attributes: &[(&str, &str)]) {
        encode::event(
            &mut self.events,
            name,
            time_unix_ns,
            attributes,
            self.max_text,
        );
    }

    /// The encoded attributes and events.
    pub(super) fn encoded(&self) -> (&[u8], &[u8]) {
        (&self.attributes, &self.events)
    }

    /// Makes this (ended) span a new one, keeping its buffers.
    fn restart(&mut self, span_id: u64, parent_span_id: u64, start_unix_ns: u64, max_text: usize) {
        self.span_id = span_id;
        self.parent_span_id = parent_span_id;
        self.start_unix_ns = start_unix_ns;
        self.end_unix_ns = 0;
        self.attributes.clear();
        self.events.clear();
        self.error = None;
        self.max_text = max_text;
    }

    /// Whether its buffers are small enough to keep for another span.
    fn keepable(&self) -> bool {
        self.attributes.capacity() + self.events.capacity() <= KEPT_SPAN_BYTES
    }
}

/// The encoded attributes a server span usually gets: a new span's buffer is
/// allocated once.
const SERVER_ATTRIBUTES: usize = 768;
/// And a client span.
const CLIENT_ATTRIBUTES: usize = 256;
/// A span whose buffers grew past this (a long path or user agent) is freed
/// when its request ends, not kept: what threads keep stays small.
const KEPT_SPAN_BYTES: usize = 4096;
/// Recordings a thread keeps for its next sampled requests: as many as it
/// usually has in flight at once; a burst beyond allocates.
const KEPT_RECORDINGS: usize = 16;
/// Client spans a recording keeps for its next request's tries.
const KEPT_TRIES: usize = 4;

thread_local! {
    /// Recordings this thread's sampled requests ended with, emptied, for its
    /// next ones: in a steady state recording allocates nothing (a span's
    /// buffers, its name, the recording: ten allocations and frees a request),
    /// and it writes to memory this thread touched last.
    #[allow(clippy::vec_box, reason = "requests hold them boxed: kept as they are, not moved out and in")]
    static KEPT: RefCell<Vec<Box<RequestSpans>>> = const { RefCell::new(Vec::new()) };
}

/// One request's spans: the server span and a client span per upstream try
/// (its children), with what they share — the trace, its flags and state, and
/// the name — kept once. Encoded on the request's thread when it ends.
#[derive(Debug, Clone)]
pub struct RequestSpans {
    pub trace_id: u128,
    pub flags: u8,
    /// Whether the server span's parent is another process's (a client's `traceparent`).
    pub remote_parent: bool,
    pub trace_state: Option<String>,
    pub name: String,
    pub server: SpanRecord,
    pub tries: Vec<SpanRecord>,
    /// Client spans of an earlier request, ended and kept for this one's tries.
    pub(super) kept_tries: Vec<SpanRecord>,
}

impl Default for RequestSpans {
    fn default() -> Self {
        RequestSpans {
            trace_id: 0,
            flags: 0,
            remote_parent: false,
            trace_state: None,
            name: String::new(),
            server: SpanRecord::new(0, 0, 0, SERVER_ATTRIBUTES, 0),
            tries: Vec::new(),
            kept_tries: Vec::new(),
        }
    }
}

impl RequestSpans {
    /// A recording for a request, its server span `span_id` (a child of
    /// `parent_span_id`, 0 for none) started at `start_unix_ns`, its spans'
    /// text values cut to `max_text` bytes: one this thread kept
    /// ([`RequestSpans::recycle`]), or a new one. The caller sets the trace's fields.
    pub fn start(
        span_id: u64,
        parent_span_id: u64,
        start_unix_ns: u64,
        max_text: usize,
    ) -> Box<RequestSpans> {
        let mut recording = KEPT
            .with(|kept| kept.borrow_mut().pop())
            .unwrap_or_default();
        recording
            .server
            .restart(span_id, parent_span_id, start_unix_ns, max_text);
        recording
    }

    /// Starts a client span for a try, a child of the server span.
    pub fn start_try(&mut self, span_id: u64, start_unix_ns: u64) {
        let (parent, max_text) = (self.server.span_id, self.server.max_text);
        let span = match self.kept_tries.pop() {
            Some(mut span) => {
                span.restart(span_id, parent, start_unix_ns, max_text);
                span
            }
            None => SpanRecord::new(span_id, parent, start_unix_ns, CLIENT_ATTRIBUTES, max_text),
        };
        self.tries.push(span);
    }

    /// The spans in it: the server span and its tries.
    pub fn span_count(&self) -> usize {
        1 + self.tries.len()
    }

    /// Keeps this ended request's recording, emptied, for this thread's next
    /// sampled request (unless it keeps enough, or this one grew large).
    pub fn recycle(mut self: Box<Self>) {
        if !self.server.keepable() {
            return;
        }
        let room = KEPT_TRIES.saturating_sub(self.kept_tries.len());
        let tries = self.tries.drain(..).filter(SpanRecord::keepable).take(room);
        self.kept_tries.extend(tries);
        self.trace_state = None;
        self.name.clear();
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < KEPT_RECORDINGS {
                kept.push(self);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_recording_is_reused_and_starts_empty() {
        let mut first = RequestSpans::start(1, 2, 3, 256);
        first.trace_state = Some("v=1".into());
        first.name.push_str("POST /v2/models/{model}/infer");
        first.server.set("url.path", "/v2/models/m/infer");
        first
            .server
            .event("trident.filter.denied", 4, &[("trident.filter", "keys")]);
        first.server.error = Some(Cow::Borrowed("HTTP 503"));
        first.server.end_unix_ns = 9;
        first.start_try(5, 6);
        first.tries[0].set("trident.try", 1i64);
        first.tries[0].end_unix_ns = 7;
        let server_buffer = first.server.attributes.as_ptr();
        let try_buffer = first.tries[0].attributes.as_ptr();
        first.recycle();

        let mut second = RequestSpans::start(10, 0, 11, 256);
        assert_eq!(second.server.attributes.as_ptr(), server_buffer, "reused");
        let server = &second.server;
        assert_eq!(
            (server.span_id, server.parent_span_id, server.start_unix_ns),
            (10, 0, 11)
        );
        assert_eq!((server.end_unix_ns, &server.error), (0, &None));
        assert_eq!(server.encoded(), (&[][..], &[][..]));
        assert!(second.name.is_empty() && second.trace_state.is_none());
        assert!(second.tries.is_empty());
        second.start_try(12, 13);
        let try_span = &second.tries[0];
        assert_eq!(try_span.attributes.as_ptr(), try_buffer, "reused");
        assert_eq!(
            (
                try_span.span_id,
                try_span.parent_span_id,
                try_span.start_unix_ns
            ),
            (12, 10, 13)
        );
        assert_eq!((try_span.end_unix_ns, try_span.encoded().0), (0, &[][..]));
    }

    #[test]
    fn a_recording_grown_large_is_not_kept() {
        let mut large = RequestSpans::start(1, 0, 1, usize::MAX);
        large
            .server
            .set("user_agent.original", "u".repeat(KEPT_SPAN_BYTES).as_str());
        large.recycle();
        let next = RequestSpans::start(2, 0, 2, usize::MAX);
        assert!(
            next.server.attributes.capacity() <= KEPT_SPAN_BYTES,
            "a new one"
        );
    }
}
