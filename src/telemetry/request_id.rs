//! Request ids: the client's `x-request-id` when it sent a usable one, else a new one.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

pub const HEADER: &str = "x-request-id";

/// Longest client-supplied id we propagate; longer ones are replaced.
const MAX_LEN: usize = 128;

/// The id to use for a request that arrived with `incoming` (the header value, if any).
pub fn resolve(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(id)
            if !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic()) =>
        {
            // All bytes are ASCII, so this is valid UTF-8.
            String::from_utf8_lossy(id).into_owned()
        }
        _ => generate(),
    }
}

/// `id` as the header sent upstream (proxied, mirrored or fanned out). Marked
/// sensitive: an id is new with every request, and HPACK indexing it would
/// only push the headers that do repeat out of the upstream connection's table.
pub fn upstream_value(id: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(id).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A process-unique id: a random per-process prefix and a counter. Cheaper than a
/// UUID (no entropy per call) and still unique across restarts and replicas.
pub fn generate() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}-{n:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_client_id() {
        assert_eq!(resolve(Some(b"abc-123")), "abc-123");
    }

    #[test]
    fn replaces_missing_or_unsafe_ids() {
        for bad in [
            None,
            Some(&b""[..]),
            Some(b"has space"),
            Some(b"line\nbreak"),
            Some(&[b'a'; 200][..]),
        ] {
            let id = resolve(bad);
            assert_eq!(id.len(), 25, "{id}");
        }
        assert_ne!(generate(), generate());
    }

    #[test]
    fn ids_go_upstream_unindexed() {
        let value = upstream_value(&generate()).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(upstream_value("a\nb"), None);
    }
}
