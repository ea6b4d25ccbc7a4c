//! Tries of one request: starting each on its endpoint, recording how it ended
//! (for balancing and ejection), and deciding whether another endpoint gets a try.
//!
//! Retries follow three rules. A try that never reached the endpoint (connect
//! failure, a refused or GOAWAY'd h2 stream) is always retried elsewhere. A try
//! answered with a configured status (default 503 / trailers-only UNAVAILABLE)
//! is retried only when the body can be replayed and the pool's retry budget
//! allows. Sequence requests are never retried: their state lives on one server.

use std::time::Instant;

use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result, RetryType};

use std::sync::Arc;

use super::{RequestCtx, Shared, TridentProxy};
use crate::config::PoolId;
use crate::protocol::Protocol;
use crate::telemetry::metrics::Outcome;
use crate::upstream::{Attempt, Pool, TryOutcome};

/// Why a request was tried again, as the metric labels it.
#[derive(Debug, Clone, Copy)]
pub(super) enum RetryReason {
    ConnectError,
    Refused,
    Status,
    /// A split side's try reached no endpoint and none was left on its side.
    SplitFallback,
}

impl RetryReason {
    fn label(self) -> &'static str {
        match self {
            RetryReason::ConnectError => "connect_error",
            RetryReason::Refused => "refused_stream",
            RetryReason::Status => "status",
            RetryReason::SplitFallback => "split_fallback",
        }
    }
}

impl Shared {
    /// The pool a request was sent to (`ctx.pool`).
    pub(super) fn pool(&self, id: Option<PoolId>) -> Option<&Pool> {
        self.pools.get(id?).map(|p| &**p)
    }
}

impl TridentProxy {
    /// Starts the next try on the endpoint chosen for it, after a jittered
    /// backoff when it is a retry.
    pub(super) async fn start_try(&self, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let (Some(pool), Some(state), Some(endpoint)) = (
            ctx.shared.pool(ctx.pool),
            ctx.state.clone(),
            ctx.next_endpoint.take(),
        ) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen for request");
        };
        if ctx.tries > 0 {
            let policy = &pool.settings.retry;
            let pause = filters::retry::backoff(
                ctx.tries,
                policy.backoff_base,
                policy.backoff_max,
                fastrand::u64(..),
            );
            tokio::time::sleep(pause).await;
        }
        let remaining = match ctx.deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(deadline_passed()),
            },
            None => None,
        };
        let peer = pool
            .peer(endpoint, self.protocol, remaining)
            .ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "chosen endpoint has no address")
            })?;
        match self.admit_pending(pool) {
            Ok(permit) => ctx.pending_permit = Some(permit),
            Err(reply) => {
                ctx.refusal = Some(reply);
                return Error::e_explain(
                    ErrorType::InternalError,
                    "circuit breaker: too many requests waiting for a connection",
                );
            }
        }
        if let Some(control) = &ctx.sequence {
            let model = ctx.model.as_deref().unwrap_or_default();
            if control.end {
                pool.sequences.release(model, &control.id);
            } else if control.start
                && pool
                    .sequences
                    .bind(model, &control.id, endpoint, pool.now_ns())
                    .is_err()
            {
                log::warn!(
                    "pool '{}': sequence table full, sequence not tracked",
                    pool.name
                );
            }
        }
        if let Some(copy) = ctx.mirror.as_mut() {
            copy.new_try();
        }
        if let Some(rewriter) = ctx.rewriter.as_mut() {
            rewriter.reset();
        }
        if let Some(check) = ctx.model_check.as_mut() {
            check.reset();
        }
        if let Some(meter) = ctx.body_meter.as_mut() {
            meter.reset();
        }
        ctx.upstream = Some(peer._address.clone());
        ctx.tries += 1;
        if endpoint < 64 {
            ctx.tried |= 1 << endpoint;
        }
        let now_ns = pool.now_ns();
        ctx.attempt = Some(Attempt::start(pool, state, endpoint, now_ns));
        if let Some(trace) = ctx.trace.as_mut() {
            let address = peer._address.as_inet().copied();
            let at = pool.instant(now_ns);
            super::tracing::start_try(trace, pool, endpoint, address, ctx.tries, at);
        }
        Ok(peer)
    }

    /// Ends the try in flight, reporting the ejections it caused.
    pub(super) fn finish_try(&self, ctx: &mut RequestCtx, outcome: TryOutcome) {
        // A try's client span is open only while its attempt is.
        let (Some(pool), Some(mut attempt)) = (ctx.shared.pool(ctx.pool), ctx.attempt.take())
        else {
            return;
        };
        let now_ns = pool.now_ns();
        if let Some(trace) = ctx.trace.as_mut() {
            super::tracing::end_try(trace, outcome, pool.instant(now_ns));
        }
        ctx.upstream_ns += attempt.elapsed_ns(now_ns);
        for (state, transition) in attempt.finish(outcome, now_ns) {
            crate::upstream::report_transition(&self.metrics, pool, &state, &transition);
        }
    }

    /// Whether another try may follow, choosing its endpoint if so.
    pub(super) fn plan_retry(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        reason: RetryReason,
    ) -> bool {
        // Owned: a split's fallback below changes the request's pool.
        let Some(pool) = ctx.pool.and_then(|id| ctx.shared.pools.get(id).cloned()) else {
            return false;
        };
        let policy = &pool.settings.retry;
        let deadline_passed = ctx.deadline.is_some_and(|d| Instant::now() >= d);
        if ctx.sequence.is_some()
            || ctx.tries > policy.max_retries
            || deadline_passed
            || session.as_ref().retry_buffer_truncated()
        {
            return false;
        }
        let now = pool.now_ns();
        if matches!(reason, RetryReason::Status) && !pool.retry_budget.try_withdraw(now) {
            self.metrics.retry_budget_exhausted(&pool.name);
            return false;
        }
        let Some(state) = ctx.state.as_deref() else {
            return false;
        };
        let next = match pool.pick(state, self.protocol, ctx.tried, now) {
            Ok(endpoint) => Some((endpoint, pool, reason)),
            // Nothing reached the upstream: the route's own pool may take the request.
            Err(_) if !matches!(reason, RetryReason::Status) => self
                .fall_back_from_split(ctx)
                .map(|(endpoint, pool)| (endpoint, pool, RetryReason::SplitFallback)),
            Err(_) => None,
        };
        let Some((endpoint, pool, reason)) = next else {
            return false;
        };
        ctx.next_endpoint = Some(endpoint);
        self.metrics.retry(&pool.name, reason.label());
        true
    }

    /// Moves a request whose split side reached no endpoint (a dead canary, before
    /// readiness checks or ejection take it out) to the route's own pool, with the
    /// model version the client asked for: the endpoint for its next try there. Not
    /// for sequences, whose state must stay where they started.
    fn fall_back_from_split(&self, ctx: &mut RequestCtx) -> Option<(usize, Arc<Pool>)> {
        let target = ctx.shared.config.routes.target(ctx.route?);
        if ctx.sequence.is_some() || ctx.pool == Some(target.pool) {
            return None;
        }
        let (own, pool) = (target.pool, ctx.shared.pools[target.pool].clone());
        let state = pool.model(ctx.model.as_deref());
        let endpoint = pool.pick(&state, self.protocol, 0, pool.now_ns()).ok()?;
        ctx.request_permit = Some(self.admit_request(&pool).ok()?);
        ctx.pool = Some(own);
        ctx.state = Some(state);
        ctx.tried = 0;
        ctx.split_side = None;
        ctx.version = None;
        ctx.rewriter = None;
        Some((endpoint, pool))
    }

    /// Decides on an answer the endpoint gave: a configured status becomes a
    /// retry (the error returned) when the rules allow.
    pub(super) fn retry_on_answer(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        status: u16,
        grpc_status: Option<u8>,
    ) -> Result<()> {
        let Some(pool) = ctx.shared.pool(ctx.pool) else {
            return Ok(());
        };
        let policy = &pool.settings.retry;
        let retryable = match (self.protocol, grpc_status) {
            (Protocol::Grpc, Some(code)) => policy.on_grpc_status.contains(&code),
            _ => policy.on_status.contains(&status),
        };
        if !(retryable && ctx.replayable && self.plan_retry(session, ctx, RetryReason::Status)) {
            return Ok(());
        }
        let outcome = match grpc_status {
            Some(code) => TryOutcome::of_answer(Outcome::Grpc(code)),
            None => TryOutcome::of_answer(Outcome::Http(status)),
        };
        self.finish_try(ctx, outcome);
        ctx.retrying_answer = true;
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            "answer retried on another endpoint",
        );
        e.set_retry(true);
        Err(e)
    }

    /// After a try failed mid-way: records it, and retries what was never processed.
    pub(super) fn after_try_error(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
        client_reused: bool,
    ) -> Box<Error> {
        if std::mem::take(&mut ctx.retrying_answer) {
            return e;
        }
        let outcome = match e.esource() {
            pingora::ErrorSource::Downstream => TryOutcome::Cancelled,
            _ => TryOutcome::Failure,
        };
        self.finish_try(ctx, outcome);
        // Pingora marks errors where the request surely was not processed (refused
        // stream, GOAWAY) as retryable; a broken reused connection only for idempotent calls.
        let reused_only = matches!(e.retry, RetryType::ReusedOnly);
        e.retry.decide_reuse(client_reused);
        let safe = e.retry() && (!reused_only || session.req_header().method.is_idempotent());
        let retry = safe && self.plan_retry(session, ctx, RetryReason::Refused);
        e.set_retry(retry);
        e
    }

    /// After a connection could not be made: nothing was sent, so another endpoint may try.
    pub(super) fn after_connect_error(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.finish_try(ctx, TryOutcome::ConnectFailure);
        let retry = self.plan_retry(session, ctx, RetryReason::ConnectError);
        e.set_retry(retry);
        e
    }
}

/// The error for a request whose deadline passed: answered as 504 / DEADLINE_EXCEEDED.
pub(super) fn deadline_passed() -> Box<Error> {
    let mut e = Error::explain(ErrorType::ReadTimedout, "the request's deadline passed");
    e.as_up();
    e
}
