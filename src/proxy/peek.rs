//! Reading the start of a request body in `request_filter`, to look inside it
//! (a gRPC model name, a batch size) before the request is routed.
//!
//! Pingora keeps what we read in its retry buffer and replays it upstream
//! before the rest of the body, so the request is forwarded intact, as long
//! as that buffer (64 KiB) never overflows: reads stop before they could.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::Result;

/// Pingora's retry buffer is also the most one HTTP/1 body read returns.
use crate::config::RETRY_BUFFER_LIMIT as RETRY_BUFFER;

/// The most read over HTTP/2, whose frames `server::h2_options` pins at 16 KiB:
/// stopping below 48 KiB never overflows the retry buffer.
pub(super) const H2_PEEK_LIMIT: usize = 48 * 1024;

/// The body bytes read so far.
#[derive(Default)]
pub struct BodyPeek {
    /// The common case, everything needed in the first chunk, needs no copy.
    first: Option<Bytes>,
    joined: Option<BytesMut>,
    complete: bool,
}

impl BodyPeek {
    pub(super) fn buffered(&self) -> &[u8] {
        match (&self.joined, &self.first) {
            (Some(joined), _) => joined,
            (None, Some(first)) => first,
            (None, None) => &[],
        }
    }

    /// Whether one more read is safe for the retry buffer.
    fn may_read(&self, session: &Session) -> bool {
        let read = self.buffered().len();
        if self.complete {
            return false;
        }
        if session.as_downstream().is_http2() {
            return read < H2_PEEK_LIMIT;
        }
        // An HTTP/1 read returns up to 64 KiB: only the first is safe, unless the
        // whole body fits.
        let content_length = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        read == 0 || content_length.is_some_and(|len| len <= RETRY_BUFFER)
    }

    /// Reads until `judge` decides from the bytes so far (and whether the body
    /// is complete), or no more can be read safely: then `None`.
    pub async fn until<T>(
        &mut self,
        session: &mut Session,
        mut judge: impl FnMut(&[u8], bool) -> Option<T>,
    ) -> Result<Option<T>> {
        loop {
            if let Some(answer) = judge(self.buffered(), self.complete) {
                return Ok(Some(answer));
            }
            if !self.may_read(session) {
                return Ok(None);
            }
            session.as_downstream_mut().enable_retry_buffering();
            self.read_chunk(session).await?;
        }
    }

    /// Reads the next chunk of the body.
    async fn read_chunk(&mut self, session: &mut Session) -> Result<()> {
        // Pingora marks body errors as the client's only when it forwards the
        // body itself; read here, a bad chunk size or a short body would count
        // as Trident's own failure (500) and against the pool.
        let chunk = session
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?;
        self.complete = chunk.is_none() || session.is_body_done();
        match (chunk, &mut self.first, &mut self.joined) {
            (None, _, _) => {}
            (Some(chunk), None, _) => self.first = Some(chunk),
            (Some(chunk), Some(head), joined) => joined
                .get_or_insert_with(|| BytesMut::from(&head[..]))
                .extend_from_slice(&chunk),
        }
        Ok(())
    }

    /// The whole body, for a request Trident answers itself rather than
    /// forwards (Pingora's retry buffer is not needed then); `None` when it is
    /// longer than `limit` bytes.
    pub async fn read_all(mut self, session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
        while !self.complete {
            if self.buffered().len() > limit {
                return Ok(None);
            }
            self.read_chunk(session).await?;
        }
        Ok(match (self.joined, self.first) {
            (Some(joined), _) => Some(joined.freeze()),
            (None, first) => Some(first.unwrap_or_default()),
        }
        .filter(|body| body.len() <= limit))
    }
}
