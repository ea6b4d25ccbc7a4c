//! Answers Trident gives itself on HTTP/1.1 (a filter's 401 or 429) keep the
//! client's connection: the request body is read and dropped first, up to
//! `server.discard_body_bytes`; a longer body ends the connection cleanly.

mod common;

use common::*;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer read off a raw connection.
struct Answer {
    status: u16,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
async fn read_answer(reader: &mut (impl AsyncRead + Unpin)) -> Answer {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = reader.read_u8().await.expect("response header byte");
        head.push(byte);
    }
    let head = String::from_utf8(head).expect("ASCII header");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("response body");
    Answer { status, headers }
}

/// Sends `request` on `stream` while reading the answer (so a large body never
/// blocks on a full socket buffer).
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Answer {
    let (mut reader, mut writer) = stream.split();
    let (written, answer) = tokio::join!(writer.write_all(request), read_answer(&mut reader));
    written.expect("request written");
    answer
}

fn infer_request(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /v2/models/m/infer HTTP/1.1\r\nhost: trident\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// The same body in HTTP/1.1 chunks of at most 16 KiB.
fn chunked_infer_request(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /v2/models/m/infer HTTP/1.1\r\nhost: trident\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n{headers}\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(16 << 10) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// A valid infer body padded with spaces to `len` bytes.
fn padded_body(len: usize) -> Vec<u8> {
    let mut body = json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32",
                                        "data": [1.0] }] })
    .to_string()
    .into_bytes();
    body.resize(len.max(body.len()), b' ');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_keep_the_connection_after_reading_the_body() {
    let (_triton, trident) = keyed_and_limited_proxy().await;
    let mut stream = TcpStream::connect(trident.http).await.expect("connect");
    let body = padded_body(256 << 10);

    let refused = exchange(&mut stream, &infer_request("", &body)).await;
    assert_eq!(refused.status, 401);
    assert_ne!(refused.header("connection"), Some("close"));

    let served = exchange(
        &mut stream,
        &infer_request("x-api-key: acme-key\r\nx-user: alice\r\n", &body),
    )
    .await;
    assert_eq!(
        served.status, 200,
        "the same connection serves the next request"
    );

    let limited = exchange(
        &mut stream,
        &chunked_infer_request("x-api-key: acme-key\r\nx-user: alice\r\n", &body),
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_ne!(limited.header("connection"), Some("close"));

    let served = exchange(
        &mut stream,
        &infer_request("x-api-key: acme-key\r\nx-user: bob\r\n", &body),
    )
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("x-mock-backend"), Some("t1"));
    // One client connection carried all four requests.
    assert_eq!(
        metric(&trident.metrics().await, "trident_downstream_connections"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_bound_ends_the_connection_cleanly() {
    let (_triton, trident) = keyed_and_limited_proxy().await;
    let body = padded_body(3 << 20);
    for request in [infer_request("", &body), chunked_infer_request("", &body)] {
        let mut stream = TcpStream::connect(trident.http).await.expect("connect");
        let refused = exchange(&mut stream, &request).await;
        assert_eq!(refused.status, 401);
        assert_eq!(refused.header("connection"), Some("close"));
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest).await;
        assert!(
            matches!(read, Ok(0)),
            "closed with a FIN, not a reset: {read:?}"
        );
    }
}
