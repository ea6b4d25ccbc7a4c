//! Test helpers shared by the filters' tests.

use pingora_http::RequestHeader;

use crate::chain::{Filter, Identity, Request, Verdict};

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The outcome of running `filter` on a request with `headers` for `model`.
pub struct Ran {
    pub verdict: Verdict,
    pub header: RequestHeader,
    pub identity: Identity,
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

pub fn run(
    filter: &dyn Filter,
    headers: &[(&str, &str)],
    model: Option<&str>,
    identity: Identity,
) -> Ran {
    let mut header = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
    for (name, value) in headers {
        header.append_header(name.to_string(), *value).unwrap();
    }
    let mut identity = identity;
    let mut response_headers = Vec::new();
    let verdict = {
        let mut request = Request {
            header: &mut header,
            client_ip: None,
            model,
            batch_size: None,
            identity: &mut identity,
            response_headers: &mut response_headers,
        };
        block_on(filter.request(&mut request))
    };
    Ran {
        verdict,
        header,
        identity,
        response_headers,
    }
}
