//! Distributed tracing (issue 17): a server span per request and a client span
//! per upstream try, W3C Trace Context read from the client and sent upstream,
//! parent-based ratio sampling, and OTLP export on a thread of its own.
//!
//! The request path records spans ([`span::SpanRecord`], attributes encoded as
//! OTLP protobuf when set) and, when the request ends, writes them into its
//! thread's slot of the [`export::Exporter`] without waiting; batching and the
//! network are the exporter thread's. A request that is
//! not sampled records nothing: it parses the `traceparent`, draws ids and
//! sends its context upstream (sampled flag off), so that the services behind
//! decide alike.

pub mod context;
mod encode;
pub mod export;
pub mod names;
pub mod sampler;
pub mod span;

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

use crate::config::Tracing;
use crate::telemetry::metrics::Metrics;
use context::{SpanContext, TraceId, TRACEPARENT, TRACESTATE};
use export::{Counters, Exporter};
use sampler::Sampler;
use span::{RequestSpans, SpanRecord};

/// Tracing as one `[tracing]` section configures it: kept by a reload that
/// leaves the section alone, replaced (the old exporter sending what it holds,
/// then ending) by one that changes it.
pub struct Tracer {
    settings: Tracing,
    sampler: Sampler,
    exporter: Exporter,
}

impl Tracer {
    pub fn start(settings: &Tracing, metrics: &Metrics) -> std::io::Result<Tracer> {
        let counters = Counters {
            exported: metrics.trace_spans_exported.clone(),
            dropped_queue_full: metrics.trace_spans_dropped_queue_full.clone(),
            dropped_export_failed: metrics.trace_spans_dropped_export_failed.clone(),
        };
        Ok(Tracer {
            settings: settings.clone(),
            sampler: Sampler::new(settings.sample_ratio),
            exporter: Exporter::start(settings, counters)?,
        })
    }

    pub fn settings(&self) -> &Tracing {
        &self.settings
    }

    /// The trace of a request with header `headers`, started at `started`;
    /// `name` writes its spans' name (into an empty string), asked only when
    /// the request is sampled.
    pub fn begin(
        &self,
        headers: &HeaderMap,
        started: Instant,
        name: impl FnOnce(&mut String),
    ) -> RequestTrace {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| context::parse_traceparent(v.as_bytes()));
        let sampled = self.sampler.sample(parent.as_ref());
        let flags = match (&parent, sampled) {
            (Some(parent), _) => parent.flags,
            (None, true) => context::SAMPLED,
            (None, false) => 0,
        };
        let server = SpanContext {
            trace_id: parent.map_or_else(context::random_trace_id, |p| p.trace_id),
            span_id: context::random_span_id(),
            flags,
        };
        let received = headers.get(&TRACESTATE).map(HeaderValue::as_bytes);
        let kept = received.and_then(context::bounded_tracestate);
        let trace_state = match (parent, received, kept) {
            (_, None, _) => TraceState::AsReceived,
            // Without a valid parent, the spec says the trace state goes too.
            (None, Some(_), _) => TraceState::Dropped,
            (Some(_), Some(all), Some(kept)) if kept.len() == all.len() => TraceState::AsReceived,
            (Some(_), Some(_), kept) => kept
                .and_then(|v| HeaderValue::from_bytes(v).ok())
                .map_or(TraceState::Dropped, TraceState::Cut),
        };
        let (clock, recording) = if sampled {
            let now = SystemTime::now();
            let started_unix_ns = now
                .checked_sub(started.elapsed())
                .unwrap_or(now)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let max_text = self.settings.attribute_value_bytes;
            let mut recording = RequestSpans::start(
                server.span_id,
                parent.map_or(0, |p| p.span_id),
                started_unix_ns,
                max_text,
            );
            recording.trace_id = server.trace_id;
            recording.flags = flags;
            recording.remote_parent = parent.is_some();
            recording.trace_state = parent
                .and(kept)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned);
            name(&mut recording.name);
            let kept = encode::cut(&recording.name, max_text).len();
            recording.name.truncate(kept);
            (
                Clock {
                    started,
                    started_unix_ns,
                },
                Some(recording),
            )
        } else {
            (
                Clock {
                    started,
                    started_unix_ns: 0,
                },
                None,
            )
        };
        RequestTrace {
            server,
            try_span_id: None,
            trace_state,
            clock,
            recording,
        }
    }

    /// Hands a finished request's spans to the exporter; never waits.
    fn submit(&self, spans: &RequestSpans) {
        self.exporter.submit(spans);
    }

    /// Exports what is queued; waits at most `within` (at exit).
    pub fn flush(&self, within: Duration) -> bool {
        self.exporter.flush(within)
    }
}

/// What becomes of the client's `tracestate` on the request to the upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceState {
    /// Passed on as the client sent it (or absent): nothing to do.
    AsReceived,
    /// Too long: this part of it goes on.
    Cut(HeaderValue),
    /// Removed: it came without a valid `traceparent`, or no part of it fits.
    Dropped,
}

/// One request's trace, in its context from `request_filter` to `logging`.
pub struct RequestTrace {
    /// The server span's context (the trace id, its flags).
    server: SpanContext,
    /// The try in flight's client span, the parent the upstream sees.
    try_span_id: Option<u64>,
    /// What the upstream gets of the client's `tracestate`.
    trace_state: TraceState,
    /// When the request started, on both clocks (the wall clock only when sampled).
    clock: Clock,
    /// What a sampled request records; `None` when it is not sampled. Boxed:
    /// an unsampled request's context stays small.
    recording: Option<Box<RequestSpans>>,
}

/// The client span of the try in flight, if one is.
fn open_try(recording: &mut RequestSpans) -> Option<&mut SpanRecord> {
    recording
        .tries
        .last_mut()
        .filter(|span| span.end_unix_ns == 0)
}

struct Clock {
    started: Instant,
    started_unix_ns: u64,
}

impl Clock {
    fn unix_ns(&self, at: Instant) -> u64 {
        self.started_unix_ns + at.saturating_duration_since(self.started).as_nanos() as u64
    }
}

impl RequestTrace {
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.server.trace_id)
    }

    pub fn sampled(&self) -> bool {
        self.recording.is_some()
    }

    /// The server span, to set attributes on; `None` when not sampled.
    pub fn server_span(&mut self) -> Option<&mut SpanRecord> {
        self.recording.as_mut().map(|r| &mut r.server)
    }

    /// The try in flight's client span; `None` when not sampled or no try runs.
    pub fn try_span(&mut self) -> Option<&mut SpanRecord> {
        open_try(self.recording.as_mut()?)
    }

    /// Notes an event on the server span (a filter's denial, say).
    pub fn event(&mut self, name: &str, attributes: &[(&str, &str)]) {
        if let Some(recording) = self.recording.as_mut() {
            let now = self.clock.unix_ns(Instant::now());
            recording.server.event(name, now, attributes);
        }
    }

    /// Starts a try's client span at `at`, ending any still open. Times come
    /// from the caller, which reads the clock for its own metrics anyway.
    pub fn start_try(&mut self, at: Instant) {
        self.end_try(None, at);
        let span_id = context::random_span_id();
        self.try_span_id = Some(span_id);
        if let Some(recording) = self.recording.as_mut() {
            recording.start_try(span_id, self.clock.unix_ns(at));
        }
    }

    /// Ends the try in flight's client span at `at`; `error` marks it failed.
    pub fn end_try(&mut self, error: Option<Cow<'static, str>>, at: Instant) {
        let clock = &self.clock;
        if let Some(span) = self.recording.as_mut().and_then(|r| open_try(r)) {
            span.end_unix_ns = clock.unix_ns(at);
            span.error = error;
        }
    }

    /// The `traceparent` of the request to the upstream: the try's span (or
    /// the server span) as parent.
    pub fn traceparent(&self) -> HeaderValue {
        let parent = SpanContext {
            span_id: self.try_span_id.unwrap_or(self.server.span_id),
            ..self.server
        };
        let mut value =
            HeaderValue::from_bytes(&parent.traceparent()).expect("hex digits and dashes");
        // New with every request: HPACK would put it in the upstream
        // connection's table only to push out the headers that do repeat.
        value.set_sensitive(true);
        value
    }

    /// What the upstream gets of the client's `tracestate`.
    pub fn tracestate(&self) -> &TraceState {
        &self.trace_state
    }

    /// Ends the request's spans at `at`, the server span failed with `error`
    /// if set; written for the exporter when sampled, the recording then kept
    /// by this thread for its next request.
    pub fn end(&mut self, tracer: &Tracer, error: Option<Cow<'static, str>>, at: Instant) {
        self.end_try(None, at);
        let Some(mut recording) = self.recording.take() else {
            return;
        };
        recording.server.end_unix_ns = self.clock.unix_ns(at);
        recording.server.error = error;
        tracer.submit(&recording);
        recording.recycle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> Tracer {
        let settings = Tracing {
            // Nothing needs to listen: these tests only look at what is recorded.
            endpoint: "http://127.0.0.1:9".parse().unwrap(),
            protocol: crate::config::OtlpProtocol::Grpc,
            sample_ratio: ratio,
            service_name: "trident".into(),
            queue_spans: 16,
            batch_spans: 16,
            batch_bytes: 1 << 20,
            attribute_value_bytes: 256,
            export_interval: Duration::from_secs(60),
            export_timeout: Duration::from_millis(100),
            headers: Vec::new(),
        };
        Tracer::start(&settings, &Metrics::new()).unwrap()
    }

    fn headers(pairs: &[(&http::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).clone(), v.parse().unwrap()))
            .collect()
    }

    fn begin(tracer: &Tracer, headers: &HeaderMap) -> RequestTrace {
        tracer.begin(headers, Instant::now(), |name| name.push_str("POST"))
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_sampled_parent_is_followed_and_its_state_passed_on() {
        let tracer = tracer(0.0);
        let mut trace = begin(
            &tracer,
            &headers(&[(&TRACEPARENT, PARENT), (&TRACESTATE, "v=1")]),
        );
        assert!(trace.sampled());
        assert_eq!(
            trace.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            trace.server_span().unwrap().parent_span_id,
            0x00f067aa0ba902b7
        );
        assert!(trace.recording.as_ref().unwrap().remote_parent);
        trace.start_try(Instant::now());
        let try_id = trace.try_span().unwrap().span_id;
        assert_eq!(trace.recording.as_ref().unwrap().name, "POST");
        let header = trace.traceparent();
        assert!(
            header.is_sensitive(),
            "never indexed by HPACK: it is new each time"
        );
        let sent = context::parse_traceparent(header.as_bytes()).unwrap();
        assert_eq!(sent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(
            sent.span_id, try_id,
            "the try's span is the upstream's parent"
        );
        assert!(sent.sampled());
        assert_eq!(trace.tracestate(), &TraceState::AsReceived);
        assert_eq!(
            trace.recording.as_ref().unwrap().trace_state.as_deref(),
            Some("v=1")
        );
        let long = format!("v=1,w={}", "x".repeat(600));
        let trace = begin(
            &tracer,
            &headers(&[(&TRACEPARENT, PARENT), (&TRACESTATE, &long)]),
        );
        assert_eq!(
            trace.tracestate(),
            &TraceState::Cut(HeaderValue::from_static("v=1"))
        );
    }

    #[test]
    fn an_unsampled_request_records_nothing_and_still_propagates() {
        let tracer = tracer(1.0);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut trace = begin(&tracer, &headers(&[(&TRACEPARENT, parent)]));
        assert!(
            !trace.sampled(),
            "the parent's decision wins over the ratio"
        );
        assert!(trace.server_span().is_none());
        trace.start_try(Instant::now());
        let sent = context::parse_traceparent(trace.traceparent().as_bytes()).unwrap();
        assert_eq!(sent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(sent.span_id, 0x00f067aa0ba902b7);
        assert!(!sent.sampled());
    }

    #[test]
    fn an_invalid_parent_starts_a_new_trace_without_its_state() {
        let tracer = tracer(1.0);
        let mut trace = begin(
            &tracer,
            &headers(&[(&TRACEPARENT, "00-zz-00-01"), (&TRACESTATE, "v=1")]),
        );
        assert!(trace.sampled());
        assert_eq!(trace.server_span().unwrap().parent_span_id, 0);
        assert!(trace.recording.as_ref().unwrap().trace_state.is_none());
        assert_eq!(trace.tracestate(), &TraceState::Dropped);
    }

    #[test]
    fn tries_are_siblings_under_the_server_span() {
        let tracer = tracer(1.0);
        let mut trace = begin(&tracer, &HeaderMap::new());
        let server_id = trace.server_span().unwrap().span_id;
        trace.start_try(Instant::now());
        let first = trace.try_span().unwrap().clone();
        trace.end_try(Some("HTTP 503".into()), Instant::now());
        assert!(trace.try_span().is_none());
        trace.start_try(Instant::now());
        let second = trace.try_span().unwrap().clone();
        assert_eq!(first.parent_span_id, server_id);
        assert_eq!(second.parent_span_id, server_id);
        assert_ne!(first.span_id, second.span_id);
        trace.end(&tracer, None, Instant::now());
        assert!(!trace.sampled(), "ended: nothing more is recorded");
    }
}
