//! W3C Trace Context: the `traceparent` a request comes with (and the one
//! Trident sends upstream), and the bound on the `tracestate` it passes on.
//! <https://www.w3.org/TR/trace-context/>

use std::fmt;

use http::HeaderName;

/// The request header carrying the trace and parent span ids. Header names,
/// not text: a lookup by text parses the name first, for every request.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The request header carrying vendors' trace state, passed on as is.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Bytes of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;
/// The longest `tracestate` kept: the spec asks every vendor to pass on at
/// least 512 characters; a longer one is cut at a list member's end.
pub const MAX_TRACESTATE: usize = 512;
/// The `sampled` bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

/// A trace id: 16 bytes, never all zero; shown as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The trace a span belongs to, and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// Every flag as received (those this version does not know are kept).
    pub flags: u8,
}

impl SpanContext {
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[..3].copy_from_slice(b"00-");
        write_hex(&mut out[3..35], self.trace_id, 32);
        out[35] = b'-';
        write_hex(&mut out[36..52], u128::from(self.span_id), 16);
        out[52] = b'-';
        write_hex(&mut out[53..55], u128::from(self.flags), 2);
        out
    }
}

/// Parses a `traceparent` header value; `None` when it is not valid (the
/// request then starts a new trace, as the spec says).
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex(&value[0..2])? as u8;
    match version {
        // Version 00 is exactly 55 bytes.
        0 if value.len() != TRACEPARENT_LEN => return None,
        0xff => return None,
        // A later version may append fields, after a dash; its first four are read as 00's.
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let span_id = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        flags,
    })
}

/// The `tracestate` to pass on: as received, or cut after the last whole
/// list member within [`MAX_TRACESTATE`] bytes (`None` when none fits).
pub fn bounded_tracestate(value: &[u8]) -> Option<&[u8]> {
    if value.len() <= MAX_TRACESTATE {
        return Some(value);
    }
    let cut = value[..=MAX_TRACESTATE].iter().rposition(|&b| b == b',')?;
    let kept = value[..cut].trim_ascii_end();
    (!kept.is_empty()).then_some(kept)
}

/// Lower-case hex only, as the spec requires (upper case is invalid).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(v))
    })
}

fn write_hex(out: &mut [u8], mut value: u128, digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out[i] = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// A random id that is not zero (zero means "invalid" in trace context).
pub fn random_trace_id() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

/// A random span id that is not zero.
pub fn random_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_traceparent_and_formats_it_back() {
        let context = parse_traceparent(VALID).unwrap();
        assert_eq!(context.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(context.span_id, 0x00f067aa0ba902b7);
        assert!(context.sampled());
        assert_eq!(&context.traceparent()[..], VALID);
        assert_eq!(
            TraceId(context.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn keeps_unknown_flags() {
        let context =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert_eq!(context.flags, 0xfe);
        assert!(!context.sampled());
        assert!(context.traceparent().ends_with(b"-fe"));
    }

    #[test]
    fn refuses_invalid_traceparents() {
        for bad in [
            &b""[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn reads_a_later_version_by_its_first_fields() {
        let context =
            parse_traceparent(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
                .unwrap();
        assert_eq!(context.span_id, 0x00f067aa0ba902b7);
    }

    #[test]
    fn tracestate_is_kept_whole_or_cut_at_a_member() {
        assert_eq!(bounded_tracestate(b"a=1,b=2"), Some(&b"a=1,b=2"[..]));
        let long = format!("a=1,b={},c=3", "x".repeat(600));
        assert_eq!(bounded_tracestate(long.as_bytes()), Some(&b"a=1"[..]));
        let one = format!("a={}", "x".repeat(600));
        assert_eq!(bounded_tracestate(one.as_bytes()), None);
    }

    #[test]
    fn random_ids_are_never_zero() {
        for _ in 0..1000 {
            assert_ne!(random_trace_id(), 0);
            assert_ne!(random_span_id(), 0);
        }
    }
}
