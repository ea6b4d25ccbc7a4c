//! Request deadlines that hold for the whole exchange with an HTTP/1 upstream,
//! and the per-request scope that carries them.
//!
//! Pingora bounds each upstream read with `read_timeout`, which every byte
//! resets: an upstream trickling its response one byte at a time would hold a
//! request forever. Here each client request runs in a [`scope`] (set by
//! [`crate::connection`] around every request it serves); the proxy records the
//! request's deadline with [`set_request_deadline`] once it knows the route; and
//! upstream HTTP/1 connections, made by [`DeadlineConnector`], fail any read or
//! write of a task whose deadline passed — waking at the deadline, not at the
//! next byte. Pingora then reports an upstream error, answered as 504 /
//! `DEADLINE_EXCEEDED`.
//!
//! gRPC upstreams are h2 connections driven by a task of their own, outside any
//! request's scope; there Pingora's response-header wait is one timeout and the
//! proxy's `response_body_filter` ends a body running past the deadline.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr as InetAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// What the serving of one client request shares with the IO it polls.
struct RequestScope {
    deadline: Cell<Option<Instant>>,
    header_read: Cell<bool>,
}

tokio::task_local! {
    static REQUEST: RequestScope;
}

/// Runs `request` (the serving of one client request) with room for its deadline.
pub async fn scope<F: Future>(request: F) -> F::Output {
    let scope = RequestScope {
        deadline: Cell::new(None),
        header_read: Cell::new(false),
    };
    REQUEST.scope(scope, request).await
}

/// Records when the request this task serves must be over; upstream HTTP/1
/// reads and writes fail from then on. Outside a [`scope`] it does nothing.
pub fn set_request_deadline(deadline: Option<Instant>) {
    let _ = REQUEST.try_with(|scope| scope.deadline.set(deadline));
}

fn request_deadline() -> Option<Instant> {
    REQUEST
        .try_with(|scope| scope.deadline.get())
        .ok()
        .flatten()
}

/// Notes that the header of the request this task serves has been read (the
/// proxy calls it as the request starts), so the client connection stops
/// timing the wait for it — which it cannot see end for a pipelined request,
/// read ahead with an earlier one.
pub fn header_read() {
    let _ = REQUEST.try_with(|scope| scope.header_read.set(true));
}

pub(crate) fn is_header_read() -> bool {
    REQUEST
        .try_with(|scope| scope.header_read.get())
        .unwrap_or(false)
}

/// Connects upstream HTTP/1 connections whose IO obeys the request deadline.
/// Pingora skips its own connect timeout and socket options for a custom
/// connector, so both are applied here.
#[derive(Debug)]
pub struct DeadlineConnector {
    pub connect_timeout: Duration,
}

#[async_trait]
impl L4Connect for DeadlineConnector {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let SocketAddr::Inet(addr) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "not an IP address: {addr}");
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(*addr)).await
        {
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("timeout {:?} connecting to {addr}", self.connect_timeout),
                )
            }
            Ok(Err(e)) => {
                return Error::e_because(connect_error_type(&e), connect_context(addr), e)
            }
            Ok(Ok(tcp)) => tcp,
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(
            DeadlineSocket {
                tcp,
                alarm: Alarm::default(),
            },
        ))))
    }
}

fn connect_error_type(e: &io::Error) -> ErrorType {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ErrorType::ConnectNoRoute
        }
        io::ErrorKind::TimedOut => ErrorType::ConnectTimedout,
        _ => ErrorType::ConnectError,
    }
}

fn connect_context(addr: &InetAddr) -> String {
    format!("Fail to connect to {addr}")
}

/// An upstream TCP connection that fails IO past the polling task's deadline.
#[derive(Debug)]
struct DeadlineSocket {
    tcp: TcpStream,
    alarm: Alarm,
}

impl DeadlineSocket {
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(deadline) = request_deadline() else {
            return io(Pin::new(&mut self.tcp), cx);
        };
        if Instant::now() >= deadline {
            return Poll::Ready(Err(deadline_error()));
        }
        match io(Pin::new(&mut self.tcp), cx) {
            Poll::Pending if self.alarm.rings(cx, deadline) => Poll::Ready(Err(deadline_error())),
            other => other,
        }
    }
}

/// Wakes a pending IO operation at an instant: a timer made on first need and
/// moved rather than remade.
#[derive(Debug, Default)]
pub(crate) struct Alarm(Option<Pin<Box<Sleep>>>);

impl Alarm {
    /// Whether `at` has come; if not, the task is woken when it does.
    pub(crate) fn rings(&mut self, cx: &mut Context<'_>, at: Instant) -> bool {
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

fn deadline_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the request's deadline passed")
}

impl AsyncRead for DeadlineSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().bounded(cx, |tcp, cx| tcp.poll_read(cx, buf))
    }
}

impl AsyncWrite for DeadlineSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .bounded(cx, |tcp, cx| tcp.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .bounded(cx, |tcp, cx| tcp.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl VirtualSocket for DeadlineSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            // Upstream peers are configured without TCP keepalive.
            _ => Ok(()),
        }
    }
}
