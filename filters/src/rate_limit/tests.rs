//! The filter adapter on real time; the bucket arithmetic is tested on a fake clock in [`super::gcra`].

use std::sync::Arc;

use pingora_http::RequestHeader;

use super::*;
use crate::chain::Identity;

struct Call {
    header: RequestHeader,
    identity: Identity,
    response_headers: Vec<(HeaderName, HeaderValue)>,
    batch_size: Option<u64>,
    model: &'static str,
}

impl Call {
    fn new(user: &str) -> Self {
        let mut header = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
        header.insert_header("x-user", user).unwrap();
        Call {
            header,
            identity: Identity {
                tenant: Some(Arc::from("acme")),
                claims: None,
            },
            response_headers: Vec::new(),
            batch_size: None,
            model: "m",
        }
    }

    fn run(&mut self, filter: &RateLimitFilter) -> Verdict {
        self.response_headers.clear();
        let mut request = Request {
            header: &mut self.header,
            client_ip: Some("127.0.0.1".parse().unwrap()),
            model: Some(self.model),
            batch_size: self.batch_size,
            identity: &mut self.identity,
            response_headers: &mut self.response_headers,
        };
        crate::testing::block_on(filter.request(&mut request))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
    }
}

fn filter(rate: f64, burst: u32, key: Vec<KeyPart>, cost: Cost) -> RateLimitFilter {
    RateLimitFilter::new(RateLimitSettings {
        quota: Quota::new(rate, burst).unwrap(),
        key,
        cost,
        max_keys: 1000,
        headers: true,
    })
}

#[test]
fn denies_past_the_burst_with_retry_after_and_headers() {
    let filter = filter(
        0.5,
        2,
        vec![KeyPart::Header(HeaderName::from_static("x-user"))],
        Cost::Request,
    );
    let mut alice = Call::new("alice");
    assert_eq!(alice.run(&filter), Verdict::Continue);
    assert_eq!(alice.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(alice.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(alice.header("x-ratelimit-reset"), Some("2"));
    assert_eq!(alice.run(&filter), Verdict::Continue);
    let Verdict::Deny(denial) = alice.run(&filter) else {
        panic!("third request admitted")
    };
    assert!(matches!(
        denial.reason,
        DenyReason::RateLimited { retry_after: Some(d) } if d > Duration::from_millis(1900)
    ));
    assert_eq!(alice.header("retry-after"), Some("2"));
    assert_eq!(alice.header("x-ratelimit-remaining"), Some("0"));
    // Another header value is another bucket.
    assert_eq!(Call::new("bob").run(&filter), Verdict::Continue);
}

#[test]
fn key_parts_combine() {
    let filter = filter(
        0.001,
        1,
        vec![KeyPart::Tenant, KeyPart::Model],
        Cost::Request,
    );
    let mut call = Call::new("x");
    assert_eq!(call.run(&filter), Verdict::Continue);
    assert!(matches!(call.run(&filter), Verdict::Deny(_)));
    call.model = "other";
    assert_eq!(call.run(&filter), Verdict::Continue);
    call.identity.tenant = Some(Arc::from("globex"));
    assert_eq!(call.run(&filter), Verdict::Continue);
    // Missing parts share one bucket.
    call.identity.tenant = None;
    assert_eq!(call.run(&filter), Verdict::Continue);
    assert!(matches!(call.run(&filter), Verdict::Deny(_)));
}

#[test]
fn batch_size_is_the_cost() {
    let filter = filter(0.001, 10, vec![], Cost::BatchSize);
    assert!(filter.needs_batch_size());
    let mut call = Call::new("x");
    call.batch_size = Some(8);
    assert_eq!(call.run(&filter), Verdict::Continue);
    assert_eq!(call.header("x-ratelimit-remaining"), Some("2"));
    call.batch_size = Some(64);
    let Verdict::Deny(denial) = call.run(&filter) else {
        panic!("over-burst request admitted")
    };
    assert_eq!(denial.reason, DenyReason::RateLimited { retry_after: None });
    assert!(denial.message.contains("burst of 10"), "{}", denial.message);
    // Unknown batch sizes cost one token.
    call.batch_size = None;
    assert_eq!(call.run(&filter), Verdict::Continue);
    assert_eq!(call.header("x-ratelimit-remaining"), Some("1"));
}
