//! Triton's model repository across a pool: a load or unload goes to every
//! endpoint of the route's pool (at most `server.repository.concurrency` at
//! once), and succeeds only when it does on all of them; an index asks every
//! endpoint and merges their answers. Trident answers these calls itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use percent_encoding::percent_decode_str;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use prost::Message;
use serde_json::{json, Value};

use crate::config::RepositorySettings;
use crate::protocol::api::RepositoryCall;
use crate::protocol::grpc::GrpcCode;
use crate::protocol::kserve::repository_index_response::ModelIndex;
use crate::protocol::kserve::{RepositoryIndexRequest, RepositoryIndexResponse};
use crate::protocol::reply::ErrorReply;
use crate::protocol::Protocol;
use crate::telemetry::request_id;
use crate::upstream::client::{http_builder, Client, H2, HTTP1};
use crate::upstream::{Endpoint, Pool};

/// The state Triton gives a model ready to serve.
const READY: &str = "READY";
/// The state of a model that cannot serve: unloaded, failed, or not there.
const UNAVAILABLE: &str = "UNAVAILABLE";

/// One call to fan out.
pub struct Call<'a> {
    pub protocol: Protocol,
    pub action: RepositoryCall,
    /// The model a load or unload names.
    pub model: Option<&'a str>,
    pub header: &'a RequestHeader,
    pub body: Bytes,
    pub request_id: &'a str,
    /// When the client stops waiting (route timeout, `grpc-timeout`).
    pub deadline: Option<Instant>,
}

/// What every endpoint agreed on: the answer's body (a gRPC message's payload).
pub struct Answer {
    pub body: Bytes,
}

/// Why one endpoint's call failed, in both protocols' terms.
struct Failure {
    http_status: u16,
    grpc_code: GrpcCode,
    message: String,
}

/// Sends `call` to every endpoint of `pool` and combines the answers; then, for
/// a load or unload, checks the model's readiness at once so traffic follows.
pub async fn fan_out(
    pool: &Pool,
    settings: &RepositorySettings,
    call: Call<'_>,
) -> Result<Answer, ErrorReply> {
    let results = ask_every_endpoint(pool, settings, &call).await;
    if let (Some(model), RepositoryCall::Load | RepositoryCall::Unload) = (call.model, call.action)
    {
        crate::upstream::health::recheck_model(pool, model).await;
    }
    let failures: Vec<(&Endpoint, &Failure)> = pool
        .endpoints
        .iter()
        .zip(&results)
        .filter_map(|(e, r)| r.as_ref().err().map(|f| (e, f)))
        .collect();
    if let Some((_, first)) = failures.first() {
        let what = match call.model {
            Some(model) => format!("{} of model '{model}'", call.action.label()),
            None => call.action.label().to_owned(),
        };
        let each: Vec<String> = failures
            .iter()
            .map(|(endpoint, f)| format!("{}: {}", called(endpoint, call.protocol), f.message))
            .collect();
        let worst = failures.iter().map(|(_, f)| f.http_status).max();
        return Err(ErrorReply::new(
            worst.unwrap_or(first.http_status),
            first.grpc_code,
            format!(
                "{what} failed on {} of {} endpoints of pool '{}': {}",
                failures.len(),
                results.len(),
                pool.name,
                each.join("; ")
            ),
        ));
    }
    let bodies = results.into_iter().flatten().collect::<Vec<_>>();
    let body = match call.action {
        RepositoryCall::Index => merge_index(pool, call.protocol, &call.body, &bodies)?,
        RepositoryCall::Load | RepositoryCall::Unload => match call.protocol {
            // Triton answers a load or unload with an empty body, or an empty message.
            Protocol::Http => Bytes::new(),
            Protocol::Grpc => bodies.into_iter().next().unwrap_or_default(),
        },
    };
    Ok(Answer { body })
}

/// How answers name an endpoint: the address the call went to, which the
/// client may know; else the endpoint's label.
fn called(endpoint: &Endpoint, protocol: Protocol) -> String {
    let address = match protocol {
        Protocol::Http => endpoint.http_addr,
        Protocol::Grpc => endpoint.grpc_addr,
    };
    address.map_or_else(|| endpoint.label.to_string(), |a| a.to_string())
}

/// Every endpoint's answer body, in endpoint order.
async fn ask_every_endpoint(
    pool: &Pool,
    settings: &RepositorySettings,
    call: &Call<'_>,
) -> Vec<Result<Bytes, Failure>> {
    let client = match call.protocol {
        Protocol::Http => Client::for_pool(&http_builder(), pool, |tls| tls.on_http, HTTP1),
        Protocol::Grpc => {
            Client::for_pool(http_builder().http2_only(true), pool, |tls| tls.on_grpc, H2)
        }
    };
    let client = match client {
        Ok(client) => client,
        Err(why) => {
            return pool
                .endpoints
                .iter()
                .map(|_| Err(transport_failure(why.clone(), false)))
                .collect()
        }
    };
    // The request's deadline, or else the pool's timeouts, bound each endpoint's call.
    let limit = [
        call.deadline
            .map(|d| d.saturating_duration_since(Instant::now())),
        pool.settings
            .read_timeout
            .map(|read| read + pool.settings.connect_timeout),
    ]
    .into_iter()
    .flatten()
    .min();
    let asks: Vec<_> = pool
        .endpoints
        .iter()
        .map(|endpoint| {
            let address = match call.protocol {
                Protocol::Http => endpoint.http_addr,
                Protocol::Grpc => endpoint.grpc_addr,
            };
            let client = &client;
            async move {
                let Some(address) = address else {
                    return Err(transport_failure(
                        format!("the endpoint has no {} address", call.protocol.label()),
                        false,
                    ));
                };
                let exchange = ask(client, address, settings.max_body_bytes, call);
                match limit {
                    None => exchange.await,
                    Some(limit) => tokio::time::timeout(limit, exchange)
                        .await
                        .unwrap_or_else(|_| Err(timed_out(limit))),
                }
            }
        })
        .collect();
    futures::stream::iter(asks)
        .buffered(settings.concurrency)
        .collect()
        .await
}

fn timed_out(limit: Duration) -> Failure {
    transport_failure(format!("no answer within {limit:?}"), true)
}

/// A call that got no answer: 502 / UNAVAILABLE, or 504 / DEADLINE_EXCEEDED.
fn transport_failure(message: String, timed_out: bool) -> Failure {
    let (http_status, grpc_code) = if timed_out {
        (504, GrpcCode::DeadlineExceeded)
    } else {
        (502, GrpcCode::Unavailable)
    };
    Failure {
        http_status,
        grpc_code,
        message,
    }
}

/// One endpoint's answer body (for gRPC, its message's payload), or why not.
async fn ask(
    client: &Client<Full<Bytes>>,
    address: std::net::SocketAddr,
    max_body_bytes: usize,
    call: &Call<'_>,
) -> Result<Bytes, Failure> {
    let path = call.header.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = client
        .uri(address, path)
        .map_err(|why| transport_failure(why, false))?;
    let mut request = http::Request::new(Full::new(call.body.clone()));
    *request.method_mut() = call.header.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    crate::mirror::copy_end_to_end_headers(&call.header.headers, headers);
    // Answers are read here, so uncompressed.
    headers.remove("grpc-accept-encoding");
    headers.remove(http::header::ACCEPT_ENCODING);
    if let Some(id) = request_id::upstream_value(call.request_id) {
        headers.insert(request_id::HEADER, id);
    }
    let response = client
        .request(request)
        .await
        .map_err(|e| transport_failure(format!("{e}"), false))?;
    let (parts, body) = response.into_parts();
    let collected = Limited::new(body, max_body_bytes)
        .collect()
        .await
        .map_err(|e| transport_failure(format!("reading its answer: {e}"), false))?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    match call.protocol {
        Protocol::Http if parts.status.is_success() => Ok(body),
        Protocol::Http => {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {}", parts.status.as_u16()));
            Err(Failure {
                http_status: parts.status.as_u16(),
                grpc_code: GrpcCode::Internal,
                message,
            })
        }
        Protocol::Grpc => {
            let status_from = |headers: &http::HeaderMap| {
                let code = crate::protocol::grpc::status(headers)?;
                let message = headers
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .map(|m| percent_decode_str(m).decode_utf8_lossy().into_owned());
                Some((code, message.unwrap_or_default()))
            };
            let status = status_from(&parts.headers).or_else(|| status_from(trailers.as_ref()?));
            match status {
                Some((0, _)) => grpc_payload(&body).ok_or_else(|| {
                    transport_failure("its answer is not one gRPC message".to_owned(), false)
                }),
                Some((code, message)) => Err(Failure {
                    http_status: http_status_of(code),
                    // Codes Trident has no name for are answered as INTERNAL.
                    grpc_code: GrpcCode::from_code(code).unwrap_or(GrpcCode::Internal),
                    message,
                }),
                None => Err(transport_failure(
                    format!("its answer (HTTP {}) has no grpc-status", parts.status),
                    false,
                )),
            }
        }
    }
}

/// The payload of a body holding one uncompressed gRPC message.
fn grpc_payload(body: &[u8]) -> Option<Bytes> {
    let (&[compressed, a, b, c, d], payload) = body.split_first_chunk::<5>()?;
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).ok()?;
    (compressed == 0 && payload.len() == len).then(|| Bytes::copy_from_slice(payload))
}

/// `payload` as one uncompressed gRPC message.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + payload.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    framed.put_slice(payload);
    framed.freeze()
}

/// The HTTP status Triton gives the failures it reports with gRPC `code`.
fn http_status_of(code: u8) -> u16 {
    match code {
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// One model version's state on each endpoint that lists it.
type Listed = BTreeMap<(String, String), Vec<(usize, ModelIndex)>>;

/// Every endpoint's index merged: one entry per (name, version), as listed
/// when every endpoint lists it alike; else `READY` when it is ready on every
/// endpoint, otherwise the first state other than `READY` an endpoint lists
/// (else `UNAVAILABLE`: not listed, or never loaded), with a `reason` naming
/// each endpoint where it is not ready. A `ready`-only index keeps the entries ready everywhere.
fn merge_index(
    pool: &Pool,
    protocol: Protocol,
    request: &[u8],
    bodies: &[Bytes],
) -> Result<Bytes, ErrorReply> {
    let unreadable = |i: usize| {
        ErrorReply::new(
            502,
            GrpcCode::Unavailable,
            format!(
                "repository index of endpoint {} in pool '{}' is unreadable",
                called(&pool.endpoints[i], protocol),
                pool.name
            ),
        )
    };
    let mut listed = Listed::new();
    for (i, body) in bodies.iter().enumerate() {
        let models = match protocol {
            Protocol::Http => http_index(body),
            Protocol::Grpc => RepositoryIndexResponse::decode(&body[..])
                .ok()
                .map(|r| r.models),
        };
        for model in models.ok_or_else(|| unreadable(i))? {
            listed
                .entry((model.name.clone(), model.version.clone()))
                .or_default()
                .push((i, model));
        }
    }
    let ready_only = match protocol {
        Protocol::Http => serde_json::from_slice::<Value>(request)
            .ok()
            .and_then(|v| v.get("ready")?.as_bool())
            .unwrap_or(false),
        Protocol::Grpc => grpc_payload(request)
            .and_then(|p| RepositoryIndexRequest::decode(p).ok())
            .is_some_and(|r| r.ready),
    };
    let merged: Vec<ModelIndex> = listed
        .into_iter()
        .map(|((name, version), on)| merge_entry(pool, protocol, name, version, &on))
        .filter(|m| !ready_only || m.state == READY)
        .collect();
    Ok(match protocol {
        Protocol::Http => {
            let entries: Vec<Value> = merged
                .into_iter()
                .map(|m| {
                    let mut entry = json!({ "name": m.name });
                    for (key, value) in [
                        ("version", m.version),
                        ("state", m.state),
                        ("reason", m.reason),
                    ] {
                        if !value.is_empty() {
                            entry[key] = Value::String(value);
                        }
                    }
                    entry
                })
                .collect();
            Bytes::from(Value::Array(entries).to_string())
        }
        Protocol::Grpc => Bytes::from(RepositoryIndexResponse { models: merged }.encode_to_vec()),
    })
}

/// Triton's HTTP index: `[{"name", "version", "state", "reason"}]`.
fn http_index(body: &[u8]) -> Option<Vec<ModelIndex>> {
    let entries: Vec<Value> = serde_json::from_slice(body).ok()?;
    let text = |entry: &Value, key: &str| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(
        entries
            .iter()
            .map(|entry| ModelIndex {
                name: text(entry, "name"),
                version: text(entry, "version"),
                state: text(entry, "state"),
                reason: text(entry, "reason"),
            })
            .collect(),
    )
}

fn merge_entry(
    pool: &Pool,
    protocol: Protocol,
    name: String,
    version: String,
    on: &[(usize, ModelIndex)],
) -> ModelIndex {
    let (_, first) = &on[0];
    let alike = |(_, m): &(usize, ModelIndex)| m.state == first.state && m.reason == first.reason;
    if on.len() == pool.endpoints.len() && on.iter().all(alike) {
        return first.clone();
    }
    let mut state = None;
    let mut differ = Vec::new();
    for (i, endpoint) in pool.endpoints.iter().enumerate() {
        let (here, reason) = match on.iter().find(|(j, _)| *j == i) {
            Some((_, m)) if m.state == READY => continue,
            // Triton lists a model of its repository never loaded without a state.
            Some((_, m)) if m.state.is_empty() => ("not loaded", m.reason.as_str()),
            Some((_, m)) => {
                state.get_or_insert_with(|| m.state.clone());
                (m.state.as_str(), m.reason.as_str())
            }
            None => (UNAVAILABLE, "not in its index"),
        };
        differ.push(if reason.is_empty() {
            format!("{}: {here}", called(endpoint, protocol))
        } else {
            format!("{}: {here} ({reason})", called(endpoint, protocol))
        });
    }
    let state = match state {
        Some(state) => state,
        None if differ.is_empty() => READY.to_owned(),
        None => UNAVAILABLE.to_owned(),
    };
    ModelIndex {
        name,
        version,
        state,
        reason: differ.join("; "),
    }
}

/// Writes `answer` as Triton writes a successful repository call's.
pub async fn send(
    session: &mut Session,
    protocol: Protocol,
    request_id: &str,
    answer: Answer,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header(request_id::HEADER, request_id)?;
    match protocol {
        Protocol::Http => {
            if !answer.body.is_empty() {
                header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            }
            header.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session.write_response_body(Some(answer.body), true).await
        }
        Protocol::Grpc => {
            header.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session
                .write_response_body(Some(grpc_message(&answer.body)), false)
                .await?;
            let ServerSession::H2(h2) = session.as_downstream_mut() else {
                // gRPC needs HTTP/2: a confused client gets the message without trailers.
                return session.write_response_body(None, true).await;
            };
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            h2.write_trailers(trailers)
        }
    }
}
