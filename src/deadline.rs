//! The scope of one client request, shared with the client connection's IO:
//! the request's deadline, and whether its header has been read.
//!
//! Pingora bounds each upstream read with `read_timeout`, which every byte
//! resets: an upstream trickling its answer one byte at a time would hold a
//! request forever. Each request is served in a [`scope`] (set by
//! [`crate::connection`]); the proxy records the request's deadline with
//! [`set_request_deadline`] once it knows the route; and the client connection
//! (HTTP/1), which Pingora keeps reading while it waits for the upstream, fails
//! that read at the deadline — waking then, not at the next byte. The proxy
//! answers the failure as 504 / `DEADLINE_EXCEEDED` (or ends a response already
//! started). An h2 client's connection is driven by its own task, outside the
//! requests' scopes: h2c requests on the HTTP listener keep Pingora's per-read
//! bound. gRPC upstreams are h2: there Pingora's response-header wait is one
//! timeout, and the proxy's `response_body_filter` ends a body running past the deadline.

use std::cell::Cell;
use std::future::Future;
use std::time::Instant;

/// What the serving of one client request shares with the IO it polls.
struct RequestScope {
    deadline: Cell<Option<Instant>>,
    header_read: Cell<bool>,
}

tokio::task_local! {
    static REQUEST: RequestScope;
}

/// Runs `request` (the serving of one client request) with room for its deadline.
pub async fn scope<F: Future>(request: F) -> F::Output {
    let scope = RequestScope {
        deadline: Cell::new(None),
        header_read: Cell::new(false),
    };
    REQUEST.scope(scope, request).await
}

/// Records when the request this task serves must be over; reading its HTTP/1
/// client connection fails from then on. Outside a [`scope`] it does nothing.
pub fn set_request_deadline(deadline: Option<Instant>) {
    let _ = REQUEST.try_with(|scope| scope.deadline.set(deadline));
}

pub(crate) fn request_deadline() -> Option<Instant> {
    REQUEST
        .try_with(|scope| scope.deadline.get())
        .ok()
        .flatten()
}

/// Notes that the header of the request this task serves has been read (the
/// proxy calls it as the request starts), so the client connection stops
/// timing the wait for it — which it cannot see end for a pipelined request,
/// read ahead with an earlier one.
pub fn header_read() {
    let _ = REQUEST.try_with(|scope| scope.header_read.set(true));
}

pub(crate) fn is_header_read() -> bool {
    REQUEST
        .try_with(|scope| scope.header_read.get())
        .unwrap_or(false)
}
