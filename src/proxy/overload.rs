//! Circuit breakers at request time (`[pools.circuit_breaker]`): a request
//! takes a place among its pool's requests in flight once routed, and keeps it
//! through its retries (a retry is the same request); each try takes a place
//! among those waiting for an upstream connection until it is connected. The
//! places are [`Permit`]s in the request's context, so every way out of the
//! request gives them back.

use filters::circuit_breaker::{Limit, Permit};
use http::{HeaderName, HeaderValue};

use super::TridentProxy;
use crate::protocol::grpc::GrpcCode;
use crate::protocol::reply::ErrorReply;
use crate::upstream::Pool;

/// Seconds a refused client is told to wait: a breaker opens for moments, not minutes.
const RETRY_AFTER_SECS: &str = "1";

impl TridentProxy {
    /// A place among `pool`'s requests in flight, or the answer that refuses the request.
    pub(super) fn admit_request(&self, pool: &Pool) -> Result<Permit, ErrorReply> {
        self.admit(pool, &pool.requests, "requests", "requests in flight")
    }

    /// A place among `pool`'s tries waiting for a connection, or the refusal.
    pub(super) fn admit_pending(&self, pool: &Pool) -> Result<Permit, ErrorReply> {
        self.admit(
            pool,
            &pool.pending,
            "pending",
            "requests waiting for an upstream connection",
        )
    }

    fn admit(
        &self,
        pool: &Pool,
        limit: &std::sync::Arc<Limit>,
        kind: &'static str,
        what: &str,
    ) -> Result<Permit, ErrorReply> {
        limit.try_acquire().ok_or_else(|| {
            self.metrics.overflow(&pool.name, kind);
            let mut reply = ErrorReply::new(
                503,
                GrpcCode::Unavailable,
                format!(
                    "pool '{}' is at its limit of {} {what} (circuit_breaker.max_{kind}): \
                     try again later",
                    pool.name,
                    limit.max()
                ),
            );
            reply.headers.push((
                HeaderName::from_static("retry-after"),
                HeaderValue::from_static(RETRY_AFTER_SECS),
            ));
            reply
        })
    }
}
