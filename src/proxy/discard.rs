//! Keeping an HTTP/1.1 client connection open after an answer Trident gives
//! itself (a filter's 401 or 429, no route, no endpoint) before reading the
//! request body.
//!
//! The next request on the connection starts where this body ends, so the body
//! must be read off the socket first; Pingora otherwise closes the connection
//! (`Connection: close`), and a rate limit turns into a storm of reconnections.
//! Like nginx, Trident reads the body and drops it, within bounds: at most
//! `server.discard_body_bytes` and `server.discard_body_timeout_ms`. A longer or
//! slower body ends the connection instead, after the answer: Trident keeps
//! reading (and dropping) it for what is left of the time bound before closing,
//! since closing a socket with unread bytes sends a TCP reset, which can destroy
//! the answer before the client has read it (nginx's "lingering close").

use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use tokio::time::Instant;

use crate::config::ConnectionLimits;

/// What became of the request body before the answer.
#[must_use]
pub(super) enum Discarded {
    /// All of it was read (or there was none, or the connection is not HTTP/1):
    /// the connection carries the next request.
    All,
    /// Not all of it: the answer closes the connection, and the rest of the body
    /// is read until `until`.
    Partly { until: Instant },
}

/// Reads and drops the rest of the request body before a local answer, within
/// `limits`; when that is not possible, the answer will say `Connection: close`.
pub(super) async fn before_answer(session: &mut Session, limits: &ConnectionLimits) -> Discarded {
    let until = Instant::now() + limits.discard_body_timeout;
    let ServerSession::H1(h1) = session.as_downstream_mut() else {
        return Discarded::All;
    };
    if h1.is_body_done() {
        return Discarded::All;
    }
    // A client waiting for `100 Continue` sends no body before it times out: close instead.
    let expects_continue = h1
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared_too_long = h1
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|length| length > limits.discard_body_bytes);
    if !expects_continue && !declared_too_long {
        let mut budget = limits.discard_body_bytes;
        let read_all = tokio::time::timeout_at(until, async {
            loop {
                match h1.read_body_bytes().await {
                    Ok(Some(bytes)) if bytes.len() <= budget => budget -= bytes.len(),
                    Ok(None) => return true,
                    Ok(Some(_)) | Err(_) => return false,
                }
            }
        })
        .await;
        if read_all == Ok(true) {
            return Discarded::All;
        }
    }
    session.set_keepalive(None);
    Discarded::Partly { until }
}

/// After the answer: reads and drops what is left of the body until the time
/// bound, so that the connection closes with a FIN the client reads after the answer.
pub(super) async fn after_answer(session: &mut Session, discarded: Discarded) {
    let Discarded::Partly { until } = discarded else {
        return;
    };
    let ServerSession::H1(h1) = session.as_downstream_mut() else {
        return;
    };
    let drained = tokio::time::timeout_at(until, async {
        while let Ok(Some(_)) = h1.read_body_bytes().await {}
    });
    // Past the bound the connection closes anyway: nothing more to do.
    let _ = drained.await;
}
