//! Answers Trident writes itself, in the shape each protocol's clients parse:
//! HTTP gets a status and Triton's `{"error": "..."}` body; gRPC gets a
//! trailers-only response (one HEADERS frame with END_STREAM) carrying
//! `grpc-status` and `grpc-message`.

use std::sync::Arc;

use bytes::Bytes;
use filters::chain::{Denial, DenyReason};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::Result;

use super::grpc::{encode_grpc_message, GrpcCode};
use super::Protocol;
use crate::telemetry::metrics::Outcome;
use crate::telemetry::request_id;

/// An error answer, with its code in both protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub http_status: u16,
    pub grpc_code: GrpcCode,
    pub message: String,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`…), in both protocols.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The `[filters.*]` instance that refused the request, for the access log.
    pub refused_by: Option<Arc<str>>,
}

impl ErrorReply {
    pub fn new(http_status: u16, grpc_code: GrpcCode, message: impl Into<String>) -> Self {
        ErrorReply {
            http_status,
            grpc_code,
            message: message.into(),
            headers: Vec::new(),
            refused_by: None,
        }
    }

    /// The answer to a request the filter named `filter` refused.
    pub fn denied(
        denial: Denial,
        filter: Option<Arc<str>>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        let (http_status, grpc_code) = match denial.reason {
            DenyReason::Unauthenticated => (401, GrpcCode::Unauthenticated),
            DenyReason::PermissionDenied => (403, GrpcCode::PermissionDenied),
            DenyReason::RateLimited { .. } => (429, GrpcCode::ResourceExhausted),
        };
        ErrorReply {
            http_status,
            grpc_code,
            message: denial.message,
            headers,
            refused_by: filter,
        }
    }

    /// The access log's `error`: the message, and the filter that refused the request.
    pub fn log_text(&self) -> String {
        match &self.refused_by {
            Some(filter) => format!("refused by filter '{filter}': {}", self.message),
            None => self.message.clone(),
        }
    }

    fn build_header(&self, status: u16, request_id: &str) -> Result<ResponseHeader> {
        let mut header = ResponseHeader::build(status, Some(4 + self.headers.len()))?;
        header.insert_header(request_id::HEADER, request_id)?;
        for (name, value) in &self.headers {
            header.append_header(name.clone(), value.clone())?;
        }
        Ok(header)
    }

    /// What the client will see, for metrics and logs.
    pub fn outcome(&self, protocol: Protocol) -> Outcome {
        match protocol {
            Protocol::Http => Outcome::Http(self.http_status),
            Protocol::Grpc => Outcome::Grpc(self.grpc_code as u8),
        }
    }

    /// Ends a gRPC response already under way with this error in its trailers
    /// (without HTTP/2 there are none to write: the caller closes the connection).
    pub fn end_grpc_response(&self, session: &mut Session) -> Result<()> {
        let ServerSession::H2(h2) = session.as_downstream_mut() else {
            return Ok(());
        };
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_code as u8)),
        );
        if let Ok(message) = HeaderValue::from_str(&encode_grpc_message(&self.message)) {
            trailers.insert("grpc-message", message);
        }
        h2.write_trailers(trailers)
    }

    /// Writes this error to the client.
    pub async fn send(
        &self,
        session: &mut Session,
        protocol: Protocol,
        request_id: &str,
    ) -> Result<()> {
        match protocol {
            Protocol::Http => {
                let body = Bytes::from(serde_json::json!({ "error": self.message }).to_string());
                let mut header = self.build_header(self.http_status, request_id)?;
                header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
                session
                    .write_response_header(Box::new(header), false)
                    .await?;
                session.write_response_body(Some(body), true).await
            }
            Protocol::Grpc => {
                let mut header = self.build_header(200, request_id)?;
                header.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
                header.insert_header("grpc-status", (self.grpc_code as u8).to_string())?;
                header.insert_header("grpc-message", encode_grpc_message(&self.message))?;
                match session.as_downstream_mut() {
                    // Pingora's generic writer never ends the stream on headers; h2's does.
                    ServerSession::H2(h2) => h2.write_response_header(Box::new(header), true),
                    // gRPC needs HTTP/2, so this is a confused client: answer it anyway.
                    _ => {
                        session
                            .write_response_header(Box::new(header), false)
                            .await?;
                        session.write_response_body(None, true).await
                    }
                }
            }
        }
    }
}
