//! Client connections and request deadlines through the real binary (issue 13):
//! slow, silent and idle connections are closed, connections beyond the limit
//! are refused and counted, a request shorter than the h2 preface and pipelined
//! requests are answered, an upstream trickling its answer is cut at the
//! route's deadline on both protocols (a stream only until it starts), and
//! upstream connections are still reused, also across worker threads.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Short connection timeouts, as `[server]` keys for `Trident::start`.
const SHORT_TIMEOUTS: &str = "header_read_timeout_ms = 1000\nidle_timeout_ms = 1000\n";
/// How long a connection the server should close may take to see EOF: the 1 s
/// timeout plus slack for a loaded machine.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Trident with pool `p` over `mock` (every model routed to it), after `server_keys`.
async fn trident_over(mock: &MockTriton, server_keys: &str) -> Trident {
    Trident::start(&format!(
        "{server_keys}[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(mock)
    ))
    .await
}

/// Reads until the server closes the connection (EOF or reset); how long it took,
/// or `None` if it stayed open for `CLOSE_WITHIN`.
async fn time_to_close(stream: &mut TcpStream) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    let closing = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_WITHIN, closing)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// One HTTP/1 response read from `stream`: status line and body (by Content-Length).
async fn read_response(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> (String, String) {
    let read = async {
        loop {
            if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffered[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if buffered.len() >= end + 4 + length {
                    let body =
                        String::from_utf8_lossy(&buffered[end + 4..end + 4 + length]).to_string();
                    buffered.drain(..end + 4 + length);
                    let status = head.lines().next().unwrap_or_default().to_owned();
                    return (status, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(n > 0, "connection closed before a whole response");
            buffered.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response in time")
}

const READY: &[u8] = b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn a_slowloris_header_is_cut_at_the_header_deadline() {
    let mock = mock("a1", &["m"]).await;
    let trident = trident_over(&mock, SHORT_TIMEOUTS).await;
    let stream = TcpStream::connect(trident.http).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        writer
            .write_all(b"GET /v2/health/ready HTTP/1.1\r\n")
            .await?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.write_all(b"x").await?;
        }
        #[allow(unreachable_code)]
        Ok::<_, std::io::Error>(())
    });
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(CLOSE_WITHIN, async {
        while let Ok(n) = reader.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickled header held the connection");
    println!("slowloris closed after {:?}", started.elapsed());
    trickle.abort();
    assert!(
        wait_metric(
            &trident,
            "trident_downstream_timeouts_total{kind=\"header\",listener=\"http\"}",
            1.0
        )
        .await
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let mock = mock("a1", &["m"]).await;
    let trident = trident_over(&mock, SHORT_TIMEOUTS).await;
    let mut stream = TcpStream::connect(trident.grpc).await.unwrap();
    let closed = time_to_close(&mut stream).await;
    println!("silent connection closed after {closed:?}");
    assert!(closed.is_some(), "a silent connection stayed open");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let mock = mock("a1", &["m"]).await;
    let trident = trident_over(&mock, SHORT_TIMEOUTS).await;
    let mut stream = TcpStream::connect(trident.http).await.unwrap();
    stream.write_all(READY).await.unwrap();
    let (status, _) = read_response(&mut stream, &mut Vec::new()).await;
    assert!(status.contains(" 200 "), "{status}");
    let closed = time_to_close(&mut stream).await;
    println!("idle HTTP/1 connection closed after {closed:?}");
    assert!(
        closed.is_some(),
        "an idle keep-alive connection stayed open"
    );
    assert!(
        wait_metric(
            &trident,
            "trident_downstream_timeouts_total{kind=\"idle\",listener=\"http\"}",
            1.0
        )
        .await
    );
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed() {
    let mock = mock("a1", &["m"]).await;
    let trident = trident_over(&mock, SHORT_TIMEOUTS).await;
    let mut stream = TcpStream::connect(trident.grpc).await.unwrap();
    // The preface and an empty SETTINGS frame, then nothing.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = time_to_close(&mut stream).await;
    println!("idle h2c connection closed after {closed:?}");
    assert!(closed.is_some(), "an idle h2c connection stayed open");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_counted() {
    let mock = mock("a1", &["m"]).await;
    let trident = trident_over(&mock, "max_connections = 2\n").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(trident.http).await.unwrap();
        stream.write_all(READY).await.unwrap();
        let (status, _) = read_response(&mut stream, &mut Vec::new()).await;
        assert!(status.contains(" 200 "), "{status}");
        held.push(stream);
    }
    let mut refused = TcpStream::connect(trident.http).await.unwrap();
    let _ = refused.write_all(READY).await;
    assert!(
        time_to_close(&mut refused).await.is_some(),
        "a connection beyond the limit was kept"
    );
    let metrics = trident.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "trident_downstream_connections_refused_total{listener=\"http\"}"
        ),
        1.0
    );
    assert_eq!(metric(&metrics, "trident_downstream_connections"), 2.0);
    // The connections held keep working.
    for stream in &mut held {
        stream.write_all(READY).await.unwrap();
        let (status, _) = read_response(stream, &mut Vec::new()).await;
        assert!(status.contains(" 200 "), "{status}");
    }
}

#[tokio::test]
async fn a_request_shorter_than_the_h2_preface_is_answered() {
    let mock = mock("a1", &["m"]).await;
    let trident = trident_over(&mock, "").await;
    let mut stream = TcpStream::connect(trident.http).await.unwrap();
    stream.write_all(b"GET /v2 HTTP/1.0\r\n\r\n").await.unwrap();
    let (status, body) = read_response(&mut stream, &mut Vec::new()).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("\"name\""), "{body}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mock = mock("a1", &["m_a", "m_b", "m_c"]).await;
    let trident = trident_over(&mock, "").await;
    let mut stream = TcpStream::connect(trident.http).await.unwrap();
    let requests: String = ["m_a", "m_b", "m_c"]
        .iter()
        .map(|m| format!("GET /v2/models/{m} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    for model in ["m_a", "m_b", "m_c"] {
        let (status, body) = read_response(&mut stream, &mut buffered).await;
        assert!(status.contains(" 200 "), "{status}");
        assert!(body.contains(&format!("\"{model}\"")), "{model}: {body}");
    }
}

/// An HTTP/1 upstream that answers every request with `head` then `body`, writing
/// the bytes from `trickle_from` on one per 200 ms.
async fn trickling_http_upstream(answer: &'static [u8], trickle_from: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                if stream.write_all(&answer[..trickle_from]).await.is_err() {
                    return;
                }
                for byte in &answer[trickle_from..] {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Trident whose route `*` (timeout 1 s) goes to the upstream at `http` or `grpc`.
async fn trident_with_deadline(key: &str, addr: SocketAddr) -> Trident {
    Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {{ {key} = \"{addr}\" }} ]\n\
         [pools.health]\nenabled = false\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\ntimeout_ms = 1000\n"
    ))
    .await
}

/// The time limit for an answer due at the 1 s deadline, with slack.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

const TRICKLED_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n\
      {\"name\":\"m\",\"versions\":[\"1\"],\"a\":\"bcd\"}";

#[tokio::test]
async fn an_http_upstream_trickling_its_header_gets_504_at_the_deadline() {
    let upstream = trickling_http_upstream(TRICKLED_ANSWER, 0).await;
    let trident = trident_with_deadline("http", upstream).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(
        ANSWER_WITHIN,
        get(&http1_client(), &trident.http_url("/v2/models/m")),
    )
    .await;
    let (status, _, body) = answer.expect("an answer at the deadline");
    println!("header trickle answered after {:?}", started.elapsed());
    assert_eq!(status, 504, "{body:?}");
}

#[tokio::test]
async fn an_http_upstream_trickling_its_body_is_cut_at_the_deadline() {
    let head_length = TRICKLED_ANSWER.len() - 40;
    let upstream = trickling_http_upstream(TRICKLED_ANSWER, head_length).await;
    let trident = trident_with_deadline("http", upstream).await;
    let started = Instant::now();
    let exchange = async {
        let response = http1_client()
            .get(trident.http_url("/v2/models/m").parse().unwrap())
            .await
            .expect("a response header");
        assert_eq!(response.status(), 200);
        http_body_util::BodyExt::collect(response.into_body()).await
    };
    let body = tokio::time::timeout(ANSWER_WITHIN, exchange).await;
    println!("body trickle cut after {:?}", started.elapsed());
    assert!(
        body.expect("the body ends at the deadline").is_err(),
        "the whole trickled body came through"
    );
}

/// An h2 (gRPC) upstream answering after `header_delay`, then trickling three
/// empty messages (15 bytes) one byte per 200 ms, then status OK.
async fn slow_grpc_upstream(header_delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |_request| async move {
                tokio::time::sleep(header_delay).await;
                let frames = futures::stream::unfold(0, |sent| async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let frame = match sent {
                        0..15 => Frame::data(Bytes::from_static(b"\0")),
                        15 => {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            Frame::trailers(trailers)
                        }
                        _ => return None,
                    };
                    Some((Ok::<_, Infallible>(frame), sent + 1))
                });
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(frames))
                    .unwrap();
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

async fn grpc_call_to(upstream: SocketAddr) -> (Result<(), tonic::Status>, Duration) {
    let trident = trident_with_deadline("grpc", upstream).await;
    let mut client = client(trident.grpc_url()).await;
    let started = Instant::now();
    let call = client.model_infer(infer_request("m", "slow", Bytes::from_static(b"x")));
    let result = tokio::time::timeout(ANSWER_WITHIN, call)
        .await
        .expect("the call ends at the deadline");
    (result.map(drop), started.elapsed())
}

#[tokio::test]
async fn a_grpc_upstream_slow_to_answer_gets_deadline_exceeded() {
    let upstream = slow_grpc_upstream(Duration::from_secs(10)).await;
    let (result, took) = grpc_call_to(upstream).await;
    println!("gRPC header delay answered after {took:?}");
    assert_eq!(
        result.expect_err("no answer").code(),
        tonic::Code::DeadlineExceeded
    );
}

#[tokio::test]
async fn a_grpc_upstream_trickling_its_body_is_cut_at_the_deadline() {
    let upstream = slow_grpc_upstream(Duration::ZERO).await;
    let (result, took) = grpc_call_to(upstream).await;
    println!("gRPC body trickle cut after {took:?}");
    assert!(result.is_err(), "the trickled body came through");
}

#[tokio::test]
async fn a_grpc_stream_outlives_the_route_deadline_once_answered() {
    let upstream = slow_grpc_upstream(Duration::ZERO).await;
    let trident = trident_with_deadline("grpc", upstream).await;
    let mut client = client(trident.grpc_url()).await;
    let started = Instant::now();
    let requests = tokio_stream::once(infer_request("m", "stream", Bytes::from_static(b"x")));
    let streaming = async {
        let mut answers = client.model_stream_infer(requests).await?.into_inner();
        let mut count = 0;
        while answers.message().await?.is_some() {
            count += 1;
        }
        Ok::<_, tonic::Status>(count)
    };
    let answers = tokio::time::timeout(Duration::from_secs(10), streaming)
        .await
        .expect("the stream ends");
    println!("gRPC stream ended after {:?}", started.elapsed());
    assert_eq!(answers.expect("the whole stream"), 3);
}

#[tokio::test]
async fn a_pipelined_request_may_take_longer_than_the_idle_timeout() {
    let mock = mock("a1", &["m_a", "m_b"]).await;
    let trident = trident_over(&mock, SHORT_TIMEOUTS).await;
    let mut stream = TcpStream::connect(trident.http).await.unwrap();
    let slow_infer = r#"{"parameters":{"mock_sleep_ms":1500},"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1.0]}]}"#;
    let requests = format!(
        "GET /v2/models/m_a HTTP/1.1\r\nHost: t\r\n\r\n\
         POST /v2/models/m_a/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{slow_infer}\
         GET /v2/models/m_b HTTP/1.1\r\nHost: t\r\n\r\n",
        slow_infer.len()
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    for expected in ["\"m_a\"", "OUTPUT0", "\"m_b\""] {
        let (status, body) = read_response(&mut stream, &mut buffered).await;
        assert!(status.contains(" 200 "), "{status}: {body}");
        assert!(body.contains(expected), "{expected}: {body}");
    }
}

#[tokio::test]
async fn upstream_http_connections_are_reused_under_a_deadline() {
    let mock = mock("a1", &["m"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[pools.health]\nenabled = false\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\ntimeout_ms = 5000\n",
        endpoint(&mock)
    ))
    .await;
    let client = http1_client();
    for _ in 0..20 {
        let (status, _, _) = get(&client, &trident.http_url("/v2/models/m")).await;
        assert_eq!(status, 200);
    }
    // A connection goes back to Pingora's pool just after its answer is sent, so
    // the next request may rarely beat it; most must find it.
    let opened = mock.connections_accepted().0;
    assert!(opened < 10, "{opened} upstream connections for 20 requests");
}

/// Issue 15: with two worker threads, a pooled upstream connection released on
/// one was taken back from the other while Pingora's idle watch still held it
/// ("failed to acquire reusable stream"): the connection was dropped and a new
/// one opened for ~15% of requests. Steady load must open a bounded number of
/// upstream connections, whatever the number of requests.
#[tokio::test]
async fn steady_load_on_two_threads_reuses_upstream_connections() {
    const CLIENTS: usize = 4;
    const REQUESTS_EACH: usize = 250;
    let mock = mock("a1", &["m"]).await;
    let trident = Trident::start_with_threads(
        &format!(
            "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[pools.health]\nenabled = false\n\
             [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
            endpoint(&mock)
        ),
        2,
    )
    .await;
    let url = trident.http_url("/v2/models/m");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                // One client each: its own keep-alive connection, one request at a time.
                let client = http1_client();
                for _ in 0..REQUESTS_EACH {
                    let (status, _, _) = get(&client, &url).await;
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    // A client connection is served on one thread, whose pool keeps its
    // upstream connection: one each, plus the odd request that beats its
    // connection's release.
    let opened = mock.connections_accepted().0;
    assert!(
        opened <= CLIENTS + 2,
        "{opened} upstream connections for {} requests on {CLIENTS} client connections",
        CLIENTS * REQUESTS_EACH
    );
}
