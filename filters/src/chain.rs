//! The filter chain: the policy a route applies to each request before it is
//! proxied (authentication, authorisation, admission).
//!
//! A [`Filter`] has one method per request phase, each defaulting to
//! "continue". A route's [`Chain`] runs its filters in order and stops at the
//! first [`Denial`], which the proxy answers in the request's protocol shape.
//! A route with no filters has an empty chain and never calls into this module.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

use crate::jwt::Claims;

/// Who sent the request, as established by the authentication filters that ran before.
#[derive(Debug, Default, Clone)]
pub struct Identity {
    /// The tenant an API key maps to, or the one a JWT names (see the JWT filter's `tenant_claim`).
    pub tenant: Option<Arc<str>>,
    /// The claims of a verified JWT.
    pub claims: Option<Arc<Claims>>,
}

/// What filters see of one request, and what they may change.
pub struct Request<'a> {
    /// The client's request header. Changes made here are sent upstream.
    pub header: &'a mut RequestHeader,
    pub client_ip: Option<IpAddr>,
    /// The model the request addresses; `None` for server-level calls (health, metadata).
    pub model: Option<&'a str>,
    /// The first dimension of the first input's shape of an infer request, when
    /// a filter in the chain asked for it ([`Filter::needs_batch_size`]) and the
    /// request carries one.
    pub batch_size: Option<u64>,
    pub identity: &'a mut Identity,
    /// Headers to add to the response, whether it comes from upstream or from a denial.
    pub response_headers: &'a mut Vec<(HeaderName, HeaderValue)>,
}

/// Why a request was refused; fixes the HTTP status and gRPC code of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Missing or invalid credentials: 401 / UNAUTHENTICATED.
    Unauthenticated,
    /// Valid credentials that do not allow this request: 403 / PERMISSION_DENIED.
    PermissionDenied,
    /// Over a rate limit: 429 / RESOURCE_EXHAUSTED. `None` when waiting cannot help
    /// (the request costs more than the bucket holds).
    RateLimited { retry_after: Option<Duration> },
}

/// A refused request: why, and the message the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub message: String,
}

impl Denial {
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
        }
    }
}

/// The result of one filter phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Deny(Denial),
}

/// One policy step. Implementations keep their state shared (`&self`) and safe
/// for concurrent requests; the per-request state travels in [`Request`].
#[async_trait]
pub trait Filter: Send + Sync {
    /// Runs once the request header is read and the request is routed, before
    /// an upstream endpoint is chosen. The default lets the request continue.
    async fn request(&self, _request: &mut Request<'_>) -> Verdict {
        Verdict::Continue
    }

    /// Whether [`Request::batch_size`] must be filled before [`Filter::request`]
    /// runs, which means reading the start of the request body. Default: no.
    fn needs_batch_size(&self) -> bool {
        false
    }

    /// Whether [`Filter::request`]'s verdict may depend on [`Request::model`]. A
    /// gRPC stream authorised for one model may name another only when no filter
    /// of its chain reads the model. Default: no.
    fn reads_model(&self) -> bool {
        false
    }
}

/// The ordered filters one route runs.
#[derive(Clone, Default)]
pub struct Chain {
    filters: Box<[Arc<dyn Filter>]>,
    needs_batch_size: bool,
    reads_model: bool,
}

impl Chain {
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        let needs_batch_size = filters.iter().any(|f| f.needs_batch_size());
        let reads_model = filters.iter().any(|f| f.reads_model());
        Chain {
            filters: filters.into_boxed_slice(),
            needs_batch_size,
            reads_model,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Whether any filter needs [`Request::batch_size`].
    pub fn needs_batch_size(&self) -> bool {
        self.needs_batch_size
    }

    /// Whether any filter's verdict depends on the model.
    pub fn reads_model(&self) -> bool {
        self.reads_model
    }

    /// Runs the filters in order; on a denial, returns the position in the chain
    /// of the filter that denied.
    pub async fn run(&self, request: &mut Request<'_>) -> Result<(), (usize, Denial)> {
        for (position, filter) in self.filters.iter().enumerate() {
            if let Verdict::Deny(denial) = filter.request(request).await {
                return Err((position, denial));
            }
        }
        Ok(())
    }
}
