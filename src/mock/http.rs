//! The HTTP/REST front end (KServe v2 + Triton's binary tensor extension).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;

use super::compress::{self, Coding};
use super::tensor::{self, DType};
use super::{
    output_name, select_outputs, sleep_duration, ErrorKind, Fault, MockError, Shared,
    BACKEND_HEADER, EXTENSIONS, FAIL_MODEL, H2_CONN_WINDOW, H2_MAX_FRAME, H2_SEND_BUF,
    H2_STREAM_WINDOW, MODEL_VERSION, REQUEST_ID_ECHO_HEADER, REQUEST_ID_HEADER, SLEEP_PARAM,
    TRITON_VERSION,
};

/// Header carrying the length of the JSON part of a binary-tensor request or response.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// Serves one accepted connection (HTTP/1.1 with keep-alive, or h2c prior knowledge).
pub(super) async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder
        .http2()
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_SEND_BUF)
        .max_concurrent_streams(None);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("mock http connection ended: {e}");
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    let request_id = req.headers().get(REQUEST_ID_HEADER).cloned();
    let echoed = super::echo_headers(req.headers());
    let mut resp = route(shared, req).await;
    let headers = resp.headers_mut();
    headers.extend(echoed);
    headers.insert(BACKEND_HEADER, shared.backend_header.clone());
    if let Some(id) = request_id {
        headers.insert(REQUEST_ID_ECHO_HEADER, id);
    }
    resp
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(&path).split('/').collect();
    let method = req.method().clone();
    let get = method == Method::GET;
    match segments.as_slice() {
        ["v2"] if get => json_response(StatusCode::OK, &server_metadata()),
        ["v2", "health", "live"] if get => empty_response(StatusCode::OK),
        ["metrics"] if get => bytes_response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(shared.metrics_text()),
        ),
        ["v2", "health", "ready"] if get => empty_response(if shared.control.server_ready() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        }),
        ["v2", "repository", "index"] if method == Method::POST => {
            json_response(StatusCode::OK, &repository_index(shared))
        }
        ["v2", "repository", "models", model, action @ ("load" | "unload")]
            if method == Method::POST =>
        {
            match shared.load_or_unload(model, *action == "load") {
                Ok(()) => empty_response(StatusCode::OK),
                Err(e) => error_response(&e),
            }
        }
        ["v2", "models", "stats"] if get => stats_response(shared, None, ""),
        ["v2", "models", model, rest @ ..] => {
            let (version, tail) = match rest {
                ["versions", version, tail @ ..] => (*version, tail),
                tail => ("", tail),
            };
            match (tail, get) {
                ([], true) => match shared.resolve(model, version) {
                    Ok(()) => json_response(StatusCode::OK, &model_metadata(model)),
                    Err(e) => error_response(&e),
                },
                (["ready"], true) => {
                    // Triton answers readiness with a bare status code.
                    let ready = shared.is_ready(model, version);
                    empty_response(if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::BAD_REQUEST
                    })
                }
                (["config"], true) => match shared.resolve(model, version) {
                    Ok(()) => json_response(StatusCode::OK, &model_config(model)),
                    Err(e) => error_response(&e),
                },
                (["stats"], true) => stats_response(shared, Some(model), version),
                (["infer"], false) if method == Method::POST => {
                    infer_response(shared, model, version, req).await
                }
                _ => not_found(&method, &path),
            }
        }
        _ => not_found(&method, &path),
    }
}

fn not_found(method: &Method, path: &str) -> Response<MockBody> {
    let body = json!({ "error": format!("Not Found: {method} {path}") });
    json_response(StatusCode::NOT_FOUND, &body)
}

async fn infer_response(
    shared: &Shared,
    model: &str,
    version: &str,
    req: Request<Incoming>,
) -> Response<MockBody> {
    if shared.control.before_infer(Some(model)).await != Fault::None {
        let body = json!({ "error": "mock unavailable" });
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    if let Err(e) = shared.resolve(model, version) {
        return error_response(&e);
    }
    let started = Instant::now();
    let result = infer(model, version, shared.control.output_offset(), req).await;
    shared.record(model, started, result.is_ok());
    result.unwrap_or_else(|e| error_response(&e))
}

/// `version`: the one asked for ("" for the default); `offset`: added to float outputs.
async fn infer(
    model: &str,
    version: &str,
    offset: f64,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, MockError> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| MockError::invalid(format!("failed to read request body: {e}")))?
        .to_bytes();
    let parsed =
        decode_body(&parts.headers, body).and_then(|b| parse_request(model, &parts.headers, b));
    let sleep = parsed.as_ref().ok().and_then(|p| p.sleep);
    if let Some(delay) = sleep {
        tokio::time::sleep(delay).await;
    }
    // The failure hook fires for any body so that tests need no well-formed payload.
    if model == FAIL_MODEL {
        return Err(MockError::internal("mock failure"));
    }
    let resp = build_response(model, version, offset, parsed?)?;
    match parts
        .headers
        .get(ACCEPT_ENCODING)
        .and_then(|v| compress::accepted(v.as_bytes()))
    {
        Some(coding) => compress_response(resp, coding),
        None => Ok(resp),
    }
}

/// Undoes a request's `Content-Encoding`.
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Bytes, MockError> {
    let Some(value) = headers.get(CONTENT_ENCODING) else {
        return Ok(body);
    };
    let unsupported = || {
        MockError::invalid(format!(
            "unsupported Content-Encoding '{}'",
            String::from_utf8_lossy(value.as_bytes())
        ))
    };
    match Coding::parse(value.as_bytes()).map_err(|()| unsupported())? {
        None => Ok(body),
        Some(coding) => compress::inflate(coding, &body)
            .map(Bytes::from)
            .map_err(|e| {
                MockError::invalid(format!(
                    "failed to decompress the {} request body: {e}",
                    coding.name()
                ))
            }),
    }
}

/// Compresses a whole infer response; Inference-Header-Content-Length keeps describing
/// the uncompressed JSON header, as in Triton.
fn compress_response(
    resp: Response<MockBody>,
    coding: Coding,
) -> Result<Response<MockBody>, MockError> {
    let (mut parts, body) = resp.into_parts();
    let chunks: Vec<Bytes> = body.chunks.into();
    let packed = compress::deflate(coding, &chunks)
        .map_err(|e| MockError::internal(format!("failed to compress the response: {e}")))?;
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static(coding.name()));
    Ok(Response::from_parts(
        parts,
        MockBody::from_chunks(vec![Bytes::from(packed)]),
    ))
}

struct ParsedInput {
    name: String,
    dtype: DType,
    shape: Vec<i64>,
    /// Binary tensor layout; JSON `data` is converted on parsing, as Triton does.
    data: Bytes,
}

struct ParsedRequest {
    id: Option<String>,
    sleep: Option<Duration>,
    binary_output_default: bool,
    inputs: Vec<ParsedInput>,
    /// Requested outputs as (name, explicit `binary_data`).
    outputs: Vec<(String, Option<bool>)>,
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn param<'a>(params: &'a Option<Map<String, Value>>, key: &str) -> Option<&'a Value> {
    params.as_ref().and_then(|p| p.get(key))
}

fn sleep_param(params: &Option<Map<String, Value>>) -> Option<Duration> {
    let ms = match param(params, SLEEP_PARAM)? {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| n.as_f64().map(|f| f as i128))?,
        Value::String(s) => s.trim().parse::<i128>().ok()?,
        _ => return None,
    };
    sleep_duration(ms)
}

/// Splits a (possibly binary-extended) request into its JSON header and tensors.
fn parse_request(
    model: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<ParsedRequest, MockError> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                MockError::invalid(format!(
                    "invalid Inference-Header-Content-Length for a {}-byte body",
                    body.len()
                ))
            })?,
    };
    let binary = body.slice(header_len..);
    let req: JsonRequest = serde_json::from_slice(&body[..header_len])
        .map_err(|e| MockError::invalid(format!("failed to parse the request JSON buffer: {e}")))?;

    let mut offset = 0usize;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let dtype = DType::parse(&input.datatype).ok_or_else(|| {
            MockError::invalid(format!(
                "invalid datatype '{}' for input '{}'",
                input.datatype, input.name
            ))
        })?;
        let data = if let Some(size) = param(&input.parameters, "binary_data_size") {
            let end = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .and_then(|s| offset.checked_add(s))
                .filter(|&end| end <= binary.len())
                .ok_or_else(|| {
                    MockError::invalid(format!(
                        "unexpected binary_data_size {size} for input '{}': only {} bytes of binary data remain",
                        input.name,
                        binary.len().saturating_sub(offset)
                    ))
                })?;
            let raw = binary.slice(offset..end);
            offset = end;
            tensor::check_raw_size(&input.name, model, dtype, &input.shape, raw.len())
                .map_err(MockError::invalid)?;
            raw
        } else if let Some(data) = input.data {
            if !dtype.json_capable() {
                return Err(MockError::invalid(format!(
                    "receiving {} data via JSON is not supported. Please use the binary data format for input '{}'",
                    dtype.as_str(),
                    input.name
                )));
            }
            let mut flat = Vec::new();
            tensor::flatten_json(data, &mut flat);
            let expected = tensor::element_count(&input.shape).map_err(MockError::invalid)?;
            if flat.len() as u64 != expected {
                return Err(MockError::invalid(format!(
                    "unexpected number of elements {} in 'data' of input '{}', shape expects {expected}",
                    flat.len(),
                    input.name
                )));
            }
            Bytes::from(tensor::json_to_raw(&input.name, dtype, &flat).map_err(MockError::invalid)?)
        } else {
            return Err(MockError::invalid(format!(
                "expected 'data' or 'binary_data_size' for input '{}'",
                input.name
            )));
        };
        inputs.push(ParsedInput {
            name: input.name,
            dtype,
            shape: input.shape,
            data,
        });
    }
    if offset != binary.len() {
        return Err(MockError::invalid(format!(
            "unexpected additional input data for model '{model}'"
        )));
    }

    let outputs = req
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let binary = param(&o.parameters, "binary_data").and_then(Value::as_bool);
            (o.name, binary)
        })
        .collect();
    Ok(ParsedRequest {
        id: req.id,
        sleep: sleep_param(&req.parameters),
        binary_output_default: param(&req.parameters, "binary_data_output")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        inputs,
        outputs,
    })
}

fn build_response(
    model: &str,
    version: &str,
    offset: f64,
    req: ParsedRequest,
) -> Result<Response<MockBody>, MockError> {
    let names: Vec<String> = req.inputs.iter().map(|i| output_name(&i.name)).collect();
    let selected = select_outputs(model, &names, req.outputs.iter().map(|o| o.0.as_str()))?;
    let mut outputs = Vec::with_capacity(selected.len());
    let mut chunks = Vec::new();
    for (k, &idx) in selected.iter().enumerate() {
        let (Some(input), Some(name)) = (req.inputs.get(idx), names.get(idx)) else {
            continue;
        };
        let binary = req
            .outputs
            .get(k)
            .and_then(|o| o.1)
            .unwrap_or(req.binary_output_default);
        let mut out = Map::new();
        out.insert("name".into(), Value::from(name.as_str()));
        out.insert("datatype".into(), Value::from(input.dtype.as_str()));
        out.insert("shape".into(), Value::from(input.shape.clone()));
        let data = if offset == 0.0 {
            input.data.clone()
        } else {
            tensor::offset_floats(input.dtype, &input.data, offset).into()
        };
        if binary {
            let raw = data;
            out.insert(
                "parameters".into(),
                json!({ "binary_data_size": raw.len() }),
            );
            chunks.push(raw);
        } else {
            let data = tensor::raw_to_json(name, input.dtype, &data).map_err(MockError::invalid)?;
            out.insert("data".into(), Value::Array(data));
        }
        outputs.push(Value::Object(out));
    }

    let mut header = Map::new();
    header.insert("model_name".into(), Value::from(model));
    let version = if version.is_empty() {
        MODEL_VERSION
    } else {
        version
    };
    header.insert("model_version".into(), Value::from(version));
    if let Some(id) = req.id {
        header.insert("id".into(), Value::from(id));
    }
    header.insert("outputs".into(), Value::Array(outputs));
    let header = Bytes::from(serde_json::to_vec(&Value::Object(header)).unwrap_or_default());

    if chunks.is_empty() {
        return Ok(bytes_response(StatusCode::OK, "application/json", header));
    }
    let header_len = HeaderValue::from(header.len());
    chunks.insert(0, header);
    let mut resp = Response::new(MockBody::from_chunks(chunks));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut().insert(HEADER_LENGTH, header_len);
    Ok(resp)
}

fn server_metadata() -> Value {
    json!({ "name": "triton", "version": TRITON_VERSION, "extensions": EXTENSIONS })
}

fn model_metadata(model: &str) -> Value {
    json!({
        "name": model,
        "versions": [MODEL_VERSION],
        "platform": super::ECHO_BACKEND,
        "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [-1] }],
        "outputs": [{ "name": "OUTPUT0", "datatype": "FP32", "shape": [-1] }],
    })
}

fn model_config(model: &str) -> Value {
    json!({
        "name": model,
        "platform": "",
        "backend": super::ECHO_BACKEND,
        "max_batch_size": 0,
        "input": [{ "name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1] }],
        "output": [{ "name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1] }],
    })
}

fn repository_index(shared: &Shared) -> Value {
    let models: Vec<Value> = shared
        .models
        .iter()
        .map(|m| {
            let (state, reason) = shared.index_state(m);
            let mut entry = json!({ "name": m, "version": MODEL_VERSION, "state": state });
            // Triton leaves an empty reason out.
            if !reason.is_empty() {
                entry["reason"] = reason.into();
            }
            entry
        })
        .collect();
    Value::Array(models)
}

fn stats_response(shared: &Shared, model: Option<&str>, version: &str) -> Response<MockBody> {
    let models = match shared.stats_models(model, version) {
        Ok(models) => models,
        Err(e) => return error_response(&e),
    };
    let duration = |count: u64, ns: u64| json!({ "count": count, "ns": ns });
    let stats: Vec<Value> = models
        .iter()
        .map(|m| {
            let s = shared.stats_of(m);
            json!({
                "name": m,
                "version": MODEL_VERSION,
                "last_inference": s.last_inference_ms,
                "inference_count": s.success_count,
                "execution_count": s.success_count,
                "inference_stats": {
                    "success": duration(s.success_count, s.success_ns),
                    "fail": duration(s.fail_count, s.fail_ns),
                    "queue": duration(s.success_count, 0),
                    "compute_input": duration(s.success_count, 0),
                    "compute_infer": duration(s.success_count, s.success_ns),
                    "compute_output": duration(s.success_count, 0),
                    "cache_hit": duration(0, 0),
                    "cache_miss": duration(0, 0),
                },
                "batch_stats": [],
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "model_stats": stats }))
}

fn error_response(e: &MockError) -> Response<MockBody> {
    let status = match e.kind {
        ErrorKind::InvalidArg => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_response(status, &json!({ "error": e.message }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<MockBody> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    bytes_response(status, "application/json", Bytes::from(body))
}

fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::from_chunks(vec![body]));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn empty_response(status: StatusCode) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::from_chunks(Vec::new()));
    *resp.status_mut() = status;
    resp
}

/// A response body of pre-built chunks with an exact length, so binary tensors are sent
/// without being copied into one buffer and HTTP/1 gets a Content-Length.
pub(super) struct MockBody {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl MockBody {
    fn from_chunks(chunks: Vec<Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        MockBody { chunks, remaining }
    }
}

impl hyper::body::Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
        }
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Parses and answers an infer request without the network or the test hooks.
#[cfg(test)]
pub(super) fn infer_now(
    model: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<MockBody>, MockError> {
    let body = decode_body(headers, body)?;
    build_response(model, "", 0.0, parse_request(model, headers, body)?)
}
