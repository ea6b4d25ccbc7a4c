//! `[tracing]`: OTLP export of request spans. Absent: tracing is off.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::file::TracingFile;
use super::resilience;
use super::Errors;

/// Request spans exported to an OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// `http://host:port` (gRPC), or the base URL spans are posted to (HTTP).
    pub endpoint: Uri,
    pub protocol: OtlpProtocol,
    /// Share of requests without a sampled-or-not parent that are traced.
    pub sample_ratio: f64,
    pub service_name: String,
    /// Finished spans waiting for export; past it spans are dropped, and counted.
    pub queue_spans: usize,
    /// Spans sent in one export request, at most.
    pub batch_spans: usize,
    /// Bytes of one export request, at most.
    pub batch_bytes: usize,
    /// The longest text attribute value, in bytes; longer ones are cut.
    pub attribute_value_bytes: usize,
    /// The longest a finished span waits for a batch to fill.
    pub export_interval: Duration,
    /// The longest one export request may take.
    pub export_timeout: Duration,
    /// Extra request headers (gRPC metadata) for the collector: auth, tenant.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    /// Protobuf bodies POSTed to `<endpoint>/v1/traces`.
    HttpProtobuf,
}

/// Sampled share of root requests by default: one in a hundred shows every
/// kind of request within seconds at production rates while the exporter and
/// collector see 1% of the traffic; parents that sample override it.
pub(super) const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// About two seconds of spans at 1,000 sampled requests per second (two spans each).
/// The queue is allocated whole at start (a few hundred bytes a span).
const MAX_QUEUE_SPANS: usize = 1 << 20;
pub(super) const DEFAULT_QUEUE_SPANS: usize = 2048;
/// The OpenTelemetry SDKs' default batch size.
pub(super) const DEFAULT_BATCH_SPANS: usize = 512;
/// A quarter of the 4 MiB an OTLP/gRPC receiver takes by default (the OpenTelemetry
/// Collector's, tonic's): room for 512 spans of about 2 KiB each.
pub(super) const DEFAULT_BATCH_BYTES: usize = 1 << 20;
const BATCH_BYTES: std::ops::RangeInclusive<usize> = (64 << 10)..=(64 << 20);
/// Envoy's default for the path it puts on spans: a Triton path fits, a user
/// agent usually does, and a span stays within a few KiB whatever a client sends.
pub(super) const DEFAULT_ATTRIBUTE_VALUE_BYTES: usize = 256;
const ATTRIBUTE_VALUE_BYTES: std::ops::RangeInclusive<usize> = 16..=(64 << 10);
pub(super) const DEFAULT_EXPORT_INTERVAL_MS: u64 = 1000;
/// The OpenTelemetry SDKs' default export timeout is 10 s; a collector that slow
/// is failing, and a shorter wait drops less of the queue behind it.
pub(super) const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 5000;
/// Names OTLP/HTTP sets itself.
const RESERVED_HEADERS: [&str; 4] = ["content-type", "content-length", "host", "te"];

pub(super) fn tracing(file: TracingFile, errors: &mut Errors) -> Option<Tracing> {
    let path = "tracing";
    let endpoint = endpoint(&file.endpoint, errors);
    let protocol = match file.protocol.as_str() {
        "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            errors.push(
                "tracing.protocol",
                format!("expected \"grpc\" or \"http/protobuf\", found {other:?}"),
            );
            OtlpProtocol::Grpc
        }
    };
    let sample_ratio = file.sample_ratio;
    if !(0.0..=1.0).contains(&sample_ratio) {
        errors.push(
            "tracing.sample_ratio",
            format!("must be between 0.0 and 1.0, found {sample_ratio}"),
        );
    }
    let service_name = file.service_name;
    if service_name.is_empty() {
        errors.push("tracing.service_name", "must not be empty");
    }
    let count = |key: &str, value: usize, errors: &mut Errors| {
        match value {
            0 => errors.push(&format!("{path}.{key}"), "must be at least 1"),
            n if n > MAX_QUEUE_SPANS => errors.push(
                &format!("{path}.{key}"),
                format!("must be at most {MAX_QUEUE_SPANS}"),
            ),
            _ => {}
        }
        value.clamp(1, MAX_QUEUE_SPANS)
    };
    let queue_spans = count("queue_spans", file.queue_spans, errors);
    let batch_spans = count("batch_spans", file.batch_spans, errors);
    if batch_spans > queue_spans {
        errors.push(
            "tracing.batch_spans",
            format!("must be at most queue_spans ({queue_spans})"),
        );
    }
    let within =
        |key: &str, value: usize, range: std::ops::RangeInclusive<usize>, errors: &mut Errors| {
            if !range.contains(&value) {
                errors.push(
                    &format!("{path}.{key}"),
                    format!("must be between {} and {}", range.start(), range.end()),
                );
            }
            value.clamp(*range.start(), *range.end())
        };
    let batch_bytes = within("batch_bytes", file.batch_bytes, BATCH_BYTES, errors);
    let attribute_value_bytes = within(
        "attribute_value_bytes",
        file.attribute_value_bytes,
        ATTRIBUTE_VALUE_BYTES,
        errors,
    );
    let export_interval =
        resilience::millis(path, "export_interval_ms", file.export_interval_ms, errors);
    let export_timeout =
        resilience::millis(path, "export_timeout_ms", file.export_timeout_ms, errors);
    let headers = file
        .headers
        .into_iter()
        .filter_map(|(name, value)| {
            let key = format!("tracing.headers.{name}");
            let Ok(parsed) = HeaderName::try_from(name.to_ascii_lowercase()) else {
                errors.push(&key, "not a valid header name");
                return None;
            };
            if RESERVED_HEADERS.contains(&parsed.as_str()) {
                errors.push(&key, "set by the exporter itself");
                return None;
            }
            let Ok(value) = HeaderValue::try_from(value) else {
                errors.push(&key, "not a valid header value");
                return None;
            };
            Some((parsed, value))
        })
        .collect();
    Some(Tracing {
        endpoint: endpoint?,
        protocol,
        sample_ratio,
        service_name,
        queue_spans,
        batch_spans,
        batch_bytes,
        attribute_value_bytes,
        export_interval,
        export_timeout,
        headers,
    })
}

/// `http://host:port[/path]`; TLS to the collector is not supported yet.
fn endpoint(value: &str, errors: &mut Errors) -> Option<Uri> {
    let key = "tracing.endpoint";
    let Ok(uri) = value.parse::<Uri>() else {
        errors.push(key, format!("invalid URL {value:?}"));
        return None;
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            errors.push(
                key,
                "https is not supported yet: run the collector (or a local agent) on plain http",
            );
            return None;
        }
        _ => {
            errors.push(key, format!("expected http://host:port, found {value:?}"));
            return None;
        }
    }
    if uri.port_u16().is_none() {
        errors.push(
            key,
            format!("name the port (OTLP: 4317 for grpc, 4318 for http/protobuf): {value:?}"),
        );
        return None;
    }
    Some(uri)
}
