//! The `rate_limit` filter: local token buckets, no Redis, no global lock.
//!
//! Each request takes `cost` tokens (1, or its batch size) from the bucket of
//! its key (client IP, header, JWT claim, tenant, model, or a combination).
//! The pure parts are [`gcra`] (one bucket) and [`keyed`] (many, bounded).

pub mod gcra;
pub mod keyed;

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};

use crate::chain::{Denial, DenyReason, Filter, Request, Verdict};
use gcra::{Decision, Quota};
use keyed::KeyedBuckets;

/// One component of a bucket key. A component the request lacks (no such
/// header, claim or tenant) counts as one shared "absent" value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Header(HeaderName),
    /// A claim of the JWT verified earlier in the chain.
    Claim(String),
    /// The tenant set by the API-key filter (or a JWT's `tenant_claim`).
    Tenant,
    Model,
}

/// What one request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// One token per request.
    Request,
    /// The batch size (first dimension of the first input's shape) of infer
    /// requests; 1 for other calls and when the body does not show it.
    BatchSize,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub quota: Quota,
    /// Empty: one bucket for every request.
    pub key: Vec<KeyPart>,
    pub cost: Cost,
    pub max_keys: usize,
    /// Add `x-ratelimit-limit`, `-remaining` and `-reset` to responses.
    pub headers: bool,
}

pub struct RateLimitFilter {
    key: Vec<KeyPart>,
    cost: Cost,
    headers: bool,
    buckets: KeyedBuckets,
    /// Keyed with a random seed, so clients cannot aim at colliding keys.
    hasher: ahash::RandomState,
    epoch: Instant,
}

impl RateLimitFilter {
    pub fn new(settings: RateLimitSettings) -> Self {
        RateLimitFilter {
            key: settings.key,
            cost: settings.cost,
            headers: settings.headers,
            buckets: KeyedBuckets::new(settings.quota, settings.max_keys),
            hasher: ahash::RandomState::new(),
            epoch: Instant::now(),
        }
    }

    fn key_of(&self, request: &Request<'_>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for part in &self.key {
            match part {
                KeyPart::ClientIp => match request.client_ip {
                    Some(std::net::IpAddr::V4(ip)) => write_part(&mut hasher, Some(&ip.octets())),
                    Some(std::net::IpAddr::V6(ip)) => write_part(&mut hasher, Some(&ip.octets())),
                    None => write_part(&mut hasher, None),
                },
                KeyPart::Header(name) => write_part(
                    &mut hasher,
                    request.header.headers.get(name).map(|v| v.as_bytes()),
                ),
                KeyPart::Claim(name) => {
                    let claims = request.identity.claims.as_ref();
                    match claims.and_then(|c| c.get(name)) {
                        Some(serde_json::Value::String(s)) => {
                            write_part(&mut hasher, Some(s.as_bytes()))
                        }
                        Some(other) => write_part(&mut hasher, Some(other.to_string().as_bytes())),
                        None => write_part(&mut hasher, None),
                    }
                }
                KeyPart::Tenant => write_part(
                    &mut hasher,
                    request.identity.tenant.as_deref().map(str::as_bytes),
                ),
                KeyPart::Model => write_part(&mut hasher, request.model.map(str::as_bytes)),
            }
        }
        hasher.finish()
    }

    fn push_headers(&self, request: &mut Request<'_>, remaining: u32, reset: Duration) {
        if !self.headers {
            return;
        }
        let burst = self.buckets.quota().burst();
        request
            .response_headers
            .push((X_RATELIMIT_LIMIT, HeaderValue::from(burst)));
        request
            .response_headers
            .push((X_RATELIMIT_REMAINING, HeaderValue::from(remaining)));
        request
            .response_headers
            .push((X_RATELIMIT_RESET, HeaderValue::from(whole_seconds(reset))));
    }
}

/// Length-prefixed, so ("ab", "c") and ("a", "bc") are different keys.
fn write_part(hasher: &mut impl Hasher, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            hasher.write_usize(bytes.len());
            hasher.write(bytes);
        }
        None => hasher.write_usize(usize::MAX),
    }
}

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Header values count whole seconds; rounding up never invites a retry that is too early.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_nanos().div_ceil(1_000_000_000) as u64
}

#[async_trait]
impl Filter for RateLimitFilter {
    async fn request(&self, request: &mut Request<'_>) -> Verdict {
        let cost = match self.cost {
            Cost::Request => 1,
            Cost::BatchSize => request
                .batch_size
                .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX).max(1)),
        };
        let key = self.key_of(request);
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        match self.buckets.take(key, now_ns, cost) {
            Decision::Allowed { remaining, full_in } => {
                self.push_headers(request, remaining, full_in);
                Verdict::Continue
            }
            Decision::Denied { retry_after } => {
                let seconds = whole_seconds(retry_after);
                request
                    .response_headers
                    .push((http::header::RETRY_AFTER, HeaderValue::from(seconds)));
                self.push_headers(request, 0, retry_after);
                Verdict::Deny(Denial::new(
                    DenyReason::RateLimited {
                        retry_after: Some(retry_after),
                    },
                    format!(
                        "rate limit exceeded: {cost} token(s) available in {:.3}s",
                        retry_after.as_secs_f64()
                    ),
                ))
            }
            Decision::TooCostly => Verdict::Deny(Denial::new(
                DenyReason::RateLimited { retry_after: None },
                format!(
                    "request costs {cost} tokens (its batch size), more than the rate limit's burst of {}",
                    self.buckets.quota().burst()
                ),
            )),
        }
    }

    fn needs_batch_size(&self) -> bool {
        self.cost == Cost::BatchSize
    }

    /// Buckets keyed by model.
    fn reads_model(&self) -> bool {
        self.key.contains(&KeyPart::Model)
    }
}

#[cfg(test)]
mod tests;
