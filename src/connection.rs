//! Client connections, served by Trident rather than Pingora's default loop, so
//! that none is held forever (issue 13):
//!
//! - at most `max_connections` are open over all listeners; one more is closed
//!   on arrival and counted ([`OpenConnections`]);
//! - on a TLS listener, the handshake is Trident's (see `crate::tls::downstream`),
//!   within the header timeout, failures counted and logged at debug level only;
//! - a request header must arrive whole within `header_read_timeout_ms`, from
//!   connection start or from a kept-alive request's first byte, however slowly
//!   it trickles ([`ClientIo`]);
//! - h2c is told from HTTP/1 on the first byte that differs from the h2
//!   preface, so a request shorter than the preface is answered;
//! - a connection without a request for `idle_timeout_ms` is closed (HTTP/1
//!   between keep-alive requests, h2 with no open stream);
//! - HTTP/1.1 pipelined requests are answered in order (RFC 9112 §9.3.2);
//! - every request runs in a [`deadline::scope`]: past the request's deadline
//!   the HTTP/1 connection's read fails, which ends the proxy's wait upstream.
//!
//! The HTTP/1 loop and h2 accept loop mirror Pingora's own
//! (`impl ServerApp for HttpServerApp`), which offers none of these hooks.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession as H2Session};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::{
    Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::config::ConnectionLimits;
use crate::deadline;
use crate::protocol::Protocol;
use crate::proxy::TridentProxy;
use crate::shutdown::Lifecycle;
use crate::telemetry::metrics::DownstreamMetrics;
use crate::tls::downstream::{DownstreamTls, IdentityCallback};

/// RFC 9113 §3.4.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams an h2 client may have refused as malformed before its connection is
/// closed: Pingora's own per-connection budget (`MAX_MALFORMED_STREAMS_PER_CONN`).
const MAX_REJECTED_STREAMS: usize = 32;

/// The client connections open over all listeners, against `max_connections`.
pub struct OpenConnections {
    count: AtomicUsize,
    max: usize,
    gauge: IntGauge,
}

impl OpenConnections {
    pub fn new(max: u32, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            count: AtomicUsize::new(0),
            max: max as usize,
            gauge,
        })
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// A place for one more connection, held until dropped; `None` when full.
    fn admit(self: &Arc<Self>) -> Option<Admission> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.gauge.inc();
        Some(Admission(self.clone()))
    }
}

struct Admission(Arc<OpenConnections>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// One listener's connection handling around Pingora's HTTP proxy.
pub struct ConnectionApp {
    proxy: Arc<HttpProxy<TridentProxy>>,
    protocol: Protocol,
    tls: Arc<DownstreamTls>,
    limits: ConnectionLimits,
    open: Arc<OpenConnections>,
    metrics: DownstreamMetrics,
    lifecycle: Arc<Lifecycle>,
}

impl ConnectionApp {
    pub fn new(
        proxy: HttpProxy<TridentProxy>,
        protocol: Protocol,
        tls: Arc<DownstreamTls>,
        limits: ConnectionLimits,
        open: Arc<OpenConnections>,
        metrics: DownstreamMetrics,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Self {
            proxy: Arc::new(proxy),
            protocol,
            tls,
            limits,
            open,
            metrics,
            lifecycle,
        }
    }

    /// Whether a response may keep its HTTP/1 connection: not once a stop or
    /// an upgrade has begun, so that clients reconnect (elsewhere, or to the
    /// new process) between requests rather than lose one on a closing socket.
    fn keeps_connections(&self, shutdown: &ShutdownWatch) -> bool {
        !*shutdown.borrow() && !self.lifecycle.is_draining()
    }

    /// HTTP/1: one request after the other (pipelined ones in order), each
    /// next one within the idle timeout.
    async fn serve_h1(&self, io: Box<ClientIo>, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(io);
        // 0: no timeout of Pingora's (it would restart at every byte); `ClientIo` times the waits.
        session.set_keepalive(self.keeps_connections(shutdown).then_some(0));
        session.set_pipelining_enabled(true);
        let mut reused = deadline::scope(self.proxy.process_new_http(session, shutdown)).await;
        while let Some((stream, settings)) = reused.map(ReusedHttpStream::consume) {
            let Ok(mut io) = stream.into_any().downcast::<ClientIo>() else {
                return;
            };
            io.await_request(Instant::now() + self.limits.idle_timeout);
            let mut session = ServerSession::new_http1(io);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            if !self.keeps_connections(shutdown) {
                session.set_keepalive(None);
            }
            reused = deadline::scope(self.proxy.process_new_http(session, shutdown)).await;
        }
    }

    /// h2c: a handshake within the header deadline, then a task per stream
    /// until the client closes, the connection idles out or the server stops.
    async fn serve_h2(
        &self,
        io: Box<ClientIo>,
        header_deadline: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let digest = Arc::new(Digest {
            ssl_digest: io.get_ssl_digest(),
            timing_digest: io.get_timing_digest(),
            proxy_digest: io.get_proxy_digest(),
            socket_digest: io.get_socket_digest(),
        });
        let shaking = handshake(io, self.proxy.h2_options());
        let mut conn = match tokio::time::timeout_at(header_deadline.into(), shaking).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                log::debug!("h2 handshake with a client failed: {e}");
                return;
            }
            Err(_) => {
                self.metrics.header_timeouts.inc();
                return;
            }
        };
        let active = Arc::new(ActiveStreams::default());
        let mut shutdown = shutdown.clone();
        let mut draining = false;
        let mut rejected = 0;
        loop {
            let accepted = if draining {
                H2Session::from_h2_conn(&mut conn, digest.clone()).await
            } else {
                tokio::select! {
                    // As Pingora: a shutdown seen first sends GOAWAY, then the accepted
                    // streams are served until the connection drains. Not at the start
                    // of a drain: h2 clients (hyper, tonic) fail a call they start as
                    // GOAWAY arrives rather than retry it, and until the listeners close
                    // the load balancer is still taking Trident out.
                    biased;
                    _ = shutdown.changed() => {
                        conn.graceful_shutdown();
                        draining = true;
                        continue;
                    }
                    accepted = H2Session::from_h2_conn(&mut conn, digest.clone()) => accepted,
                    _ = active.idle_for(self.limits.idle_timeout) => {
                        self.metrics.idle_timeouts.inc();
                        return;
                    }
                }
            };
            match accepted {
                Ok(Some(H2Accept::Session(session))) => {
                    let proxy = self.proxy.clone();
                    let shutdown = shutdown.clone();
                    let stream = active.start();
                    tokio::spawn(async move {
                        let session = ServerSession::new_http2(session);
                        deadline::scope(proxy.process_new_http(session, &shutdown)).await;
                        drop(stream);
                    });
                }
                Ok(Some(H2Accept::Rejected)) => {
                    rejected += 1;
                    if rejected >= MAX_REJECTED_STREAMS {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // Clients often drop the TCP connection without closing h2.
                    log::debug!("h2 client connection ended: {e}");
                    return;
                }
            }
        }
    }
}

impl ConnectionApp {
    /// The server side of a TLS handshake, done by the header deadline; `None`:
    /// it failed (counted; logged at debug level, since scanners and health
    /// probes fail handshakes all day) or took too long.
    async fn tls_handshake(
        &self,
        acceptor: &Acceptor,
        stream: Stream,
        header_deadline: Instant,
    ) -> Option<Stream> {
        // Pingora hands a plain listener's connections over as its L4 stream;
        // the TLS stream wraps that concrete type.
        let l4 = *stream.into_any().downcast::<L4Stream>().ok()?;
        let peer = l4
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        let shaking = handshake_with_callback(acceptor, l4, &IdentityCallback);
        match tokio::time::timeout_at(header_deadline.into(), shaking).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                self.metrics.tls_failures.inc();
                log::debug!("TLS handshake with client {peer} failed: {e}");
                None
            }
            Err(_) => {
                self.metrics.header_timeouts.inc();
                None
            }
        }
    }
}

#[async_trait]
impl ServerApp for ConnectionApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Dropping `stream` closes a refused connection.
        let Some(_admission) = self.open.admit() else {
            self.metrics.refused.inc();
            return None;
        };
        self.metrics.accepted.inc();
        let header_deadline = Instant::now() + self.limits.header_read_timeout;
        let stream = match self.tls.acceptor(self.protocol) {
            None => stream,
            Some(acceptor) => {
                self.tls_handshake(&acceptor, stream, header_deadline)
                    .await?
            }
        };
        // h2 over TLS (ALPN) starts with the same preface as h2c: one sniff tells both.
        let mut io = Box::new(ClientIo::new(
            stream,
            self.limits.header_read_timeout,
            self.metrics.clone(),
        ));
        io.await_header(header_deadline);
        match io.sniff_h2c().await {
            Ok(true) => self.serve_h2(io, header_deadline, shutdown).await,
            Ok(false) => self.serve_h1(io, shutdown).await,
            // Closed, broken or timed out before its first request said which.
            Err(_) => {}
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// The h2 streams being served on one connection, so its idle time counts
/// only while none is.
#[derive(Default)]
struct ActiveStreams {
    count: AtomicUsize,
    none_left: Notify,
}

impl ActiveStreams {
    fn start(self: &Arc<Self>) -> ActiveStream {
        self.count.fetch_add(1, Ordering::AcqRel);
        ActiveStream(self.clone())
    }

    /// Returns once no stream has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        while self.count.load(Ordering::Acquire) > 0 {
            self.none_left.notified().await;
        }
        tokio::time::sleep(idle).await;
    }
}

struct ActiveStream(Arc<ActiveStreams>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_one();
        }
    }
}

/// What a client connection is waiting for while [`ClientIo`] times it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A kept-alive connection's next request: its first byte, within the idle timeout.
    Request,
    /// The rest of a request header, within the header timeout.
    Header,
}

#[derive(Debug)]
struct Wait {
    phase: Phase,
    until: Instant,
    /// Bytes in the header line being read (CR not counted).
    line_len: usize,
    /// Whether a non-empty header line ended: the next empty line ends the header.
    seen_line: bool,
    counted: bool,
}

/// A client connection's stream that times the wait for each request header
/// as a whole (not per read), and first serves the bytes read to tell h2c
/// from HTTP/1.
#[derive(Debug)]
pub struct ClientIo {
    inner: Stream,
    /// Bytes read while telling h2c from HTTP/1, served before any others.
    read_ahead: BytesMut,
    /// Set while a request header is awaited.
    wait: Option<Wait>,
    header_timeout: Duration,
    alarm: Alarm,
    metrics: DownstreamMetrics,
}

impl ClientIo {
    fn new(inner: Stream, header_timeout: Duration, metrics: DownstreamMetrics) -> Self {
        Self {
            inner,
            read_ahead: BytesMut::new(),
            wait: None,
            header_timeout,
            alarm: Alarm::default(),
            metrics,
        }
    }

    /// The first request's header must have arrived by `until`.
    fn await_header(&mut self, until: Instant) {
        self.wait(Phase::Header, until);
    }

    /// The next request must start by `until`, and its header then arrive within the header timeout.
    fn await_request(&mut self, until: Instant) {
        self.wait(Phase::Request, until);
    }

    fn wait(&mut self, phase: Phase, until: Instant) {
        self.wait = Some(Wait {
            phase,
            until,
            line_len: 0,
            seen_line: false,
            counted: false,
        });
    }

    /// Whether the client speaks h2c: reads up to the preface's length and
    /// decides at the first byte that differs. An error: closed, broken or too slow.
    async fn sniff_h2c(&mut self) -> io::Result<bool> {
        loop {
            if !H2_PREFACE.starts_with(&self.read_ahead) {
                return Ok(false);
            }
            if self.read_ahead.len() == H2_PREFACE.len() {
                return Ok(true);
            }
            let mut chunk = [0; H2_PREFACE.len()];
            let wanted = H2_PREFACE.len() - self.read_ahead.len();
            let read = poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut chunk[..wanted]);
                ready!(self.poll_timed(cx, &mut buf))?;
                Poll::Ready(Ok::<_, io::Error>(buf.filled().len()))
            })
            .await?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.read_ahead.extend_from_slice(&chunk[..read]);
        }
    }

    /// Reads from the connection, failing once the awaited header is late.
    fn poll_timed(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.wait.is_some() && deadline::is_header_read() {
            self.wait = None;
        }
        let Some(until) = self.wait.as_ref().map(|w| w.until) else {
            return self.poll_in_request(cx, buf);
        };
        if Instant::now() >= until {
            return Poll::Ready(self.time_out());
        }
        let before = buf.filled().len();
        match Pin::new(&mut *self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                self.received(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.alarm.rings(cx, until) => Poll::Ready(self.time_out()),
            other => other,
        }
    }

    /// Reads while a request is served: past its deadline the read fails (see
    /// `crate::deadline`), so the proxy stops waiting for a slow upstream.
    fn poll_in_request(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(deadline) = deadline::request_deadline() else {
            return Pin::new(&mut *self.inner).poll_read(cx, buf);
        };
        if Instant::now() >= deadline {
            return Poll::Ready(Err(deadline_passed()));
        }
        match Pin::new(&mut *self.inner).poll_read(cx, buf) {
            Poll::Pending if self.alarm.rings(cx, deadline) => Poll::Ready(Err(deadline_passed())),
            other => other,
        }
    }

    /// Follows the awaited header through `bytes`, and ends the wait at its end.
    fn received(&mut self, bytes: &[u8]) {
        let Some(wait) = self.wait.as_mut() else {
            return;
        };
        if bytes.is_empty() {
            return;
        }
        if wait.phase == Phase::Request {
            wait.phase = Phase::Header;
            wait.until = Instant::now() + self.header_timeout;
        }
        for &byte in bytes {
            match byte {
                b'\n' if wait.line_len == 0 && wait.seen_line => {
                    self.wait = None;
                    return;
                }
                b'\n' => {
                    wait.seen_line |= wait.line_len > 0;
                    wait.line_len = 0;
                }
                b'\r' => {}
                _ => wait.line_len += 1,
            }
        }
    }

    /// The read result once the wait is over: end of stream if no byte of a
    /// next request came (a quiet close), an error for a late header.
    fn time_out(&mut self) -> io::Result<()> {
        let Some(wait) = self.wait.as_mut() else {
            return Ok(());
        };
        let counter = match wait.phase {
            Phase::Request => &self.metrics.idle_timeouts,
            Phase::Header => &self.metrics.header_timeouts,
        };
        if !std::mem::replace(&mut wait.counted, true) {
            counter.inc();
        }
        match wait.phase {
            Phase::Request => Ok(()),
            Phase::Header => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request header not received in time",
            )),
        }
    }
}

fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the request's deadline passed")
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = buf.remaining().min(this.read_ahead.len());
            buf.put_slice(&this.read_ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        this.poll_timed(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

// Pingora's stream traits, delegated to the connection underneath.

#[async_trait]
impl Shutdown for ClientIo {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for ClientIo {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientIo {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for ClientIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for ClientIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

impl Peek for ClientIo {}

/// Wakes a pending IO operation at an instant: a timer made on first need and
/// moved rather than remade.
#[derive(Debug, Default)]
struct Alarm(Option<Pin<Box<Sleep>>>);

impl Alarm {
    /// Whether `at` has come; if not, the task is woken when it does.
    fn rings(&mut self, cx: &mut Context<'_>, at: Instant) -> bool {
        let at = tokio::time::Instant::from_std(at);
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    /// A connection awaiting its first header, over a stream never read here.
    fn awaiting_header() -> ClientIo {
        let stream: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
        let metrics = Metrics::new().downstream("http");
        let mut io = ClientIo::new(stream, Duration::from_secs(1), metrics);
        io.await_header(Instant::now() + Duration::from_secs(1));
        io
    }

    #[test]
    fn the_wait_ends_with_the_header_however_it_is_split() {
        let header = b"GET / HTTP/1.1\r\nHost: t\r\n\r\nBODY";
        for split in 1..header.len() {
            let mut io = awaiting_header();
            io.received(&header[..split]);
            assert_eq!(io.wait.is_none(), split >= 27, "split at {split}");
            io.received(&header[split..]);
            assert!(io.wait.is_none(), "split at {split}");
        }
    }

    #[test]
    fn bare_line_feeds_end_a_header_and_leading_empty_lines_do_not() {
        let mut io = awaiting_header();
        io.received(b"\r\n\nGET / HTTP/1.0\n");
        assert!(io.wait.is_some());
        io.received(b"\n");
        assert!(io.wait.is_none());
    }

    #[test]
    fn a_kept_alive_connection_waits_for_the_header_from_the_first_byte() {
        let mut io = awaiting_header();
        io.await_request(Instant::now() + Duration::from_secs(60));
        io.received(b"G");
        let wait = io.wait.as_ref().expect("still waiting");
        assert_eq!(wait.phase, Phase::Header);
        assert!(wait.until <= Instant::now() + Duration::from_secs(1));
    }
}
