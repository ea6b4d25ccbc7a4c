//! The proxy's worker threads: each runs its own Pingora listening services
//! (one per listener) on a single-threaded tokio runtime of its own, and all
//! accept on the same listening sockets.
//!
//! Why not one Pingora service with `threads` worker threads: Pingora spawns a
//! released upstream connection's idle watch on a random thread of the
//! service's runtime (`pingora_runtime::current_handle`), and a request on
//! another thread taking the connection back races that watch's release: Pingora
//! logs `failed to acquire reusable stream` at ERROR, drops the connection and
//! opens a new one (~15% of requests at 2 threads). Here each worker has proxies,
//! hence upstream pools, of its own, and on a plain tokio runtime
//! `current_handle` is the worker's own runtime: a pooled connection is used,
//! released and watched on one thread only.
//!
//! Why each worker has its own descriptor of a listening socket: Pingora's
//! services bound to one address share the descriptor in its table, each takes
//! ownership of it, and the second to close it aborts the process (`IO Safety
//! violation`). So the socket is bound once (or taken over on an upgrade) into
//! Pingora's table, which hands it to the next process on `SIGQUIT`, and each
//! worker gets a descriptor of its own in a table of its own.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::server::{Fds, ListenFds, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::Service as PingoraService;
use tokio::sync::oneshot;

/// Most worker threads: the descriptors for them all pass in one `SCM_RIGHTS`
/// message, which the kernel caps at 253.
pub const MAX_WORKERS: usize = 128;

/// Worker threads serving the same listeners, as one Pingora service.
pub struct Workers<A> {
    name: String,
    /// The listening addresses, as keys of Pingora's descriptor table.
    addresses: Vec<String>,
    /// Per worker, a listening service per address, each with an app of its own.
    workers: Vec<Vec<Service<A>>>,
}

impl<A: ServerApp + Send + Sync + 'static> Workers<A> {
    /// `workers`: per worker thread, the same listeners (at most [`MAX_WORKERS`]).
    pub fn new(name: String, workers: Vec<Vec<Service<A>>>) -> Self {
        let addresses = workers
            .first()
            .into_iter()
            .flatten()
            .flat_map(|service| service.listen_addresses().unwrap_or_default())
            .collect();
        Workers {
            name,
            addresses,
            workers,
        }
    }

    /// Per worker, its table of descriptors of the listening sockets: the first
    /// worker takes the socket in Pingora's table (inherited on an upgrade, else
    /// bound here and added), the others duplicates of it.
    fn worker_tables(&self, pingora_fds: &ListenFds) -> io::Result<Vec<ListenFds>> {
        let mut tables: Vec<Fds> = self.workers.iter().map(|_| Fds::new()).collect();
        for address in &self.addresses {
            let inherited = pingora_fds.lock().get(address).copied();
            let socket = match inherited {
                Some(fd) => fd,
                None => {
                    let listener = TcpListener::bind(address).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot listen on {address}: {e}"))
                    })?;
                    listener.set_nonblocking(true)?;
                    let fd = listener.into_raw_fd();
                    pingora_fds.lock().add(address.clone(), fd);
                    fd
                }
            };
            let copies = duplicates(socket, tables.len() - 1)?;
            for (table, fd) in tables.iter_mut().zip(std::iter::once(socket).chain(copies)) {
                table.add(address.clone(), fd);
            }
        }
        Ok(tables
            .into_iter()
            .map(|table| Arc::new(Mutex::new(table)))
            .collect())
    }
}

/// Runs one worker until `stop` is dropped: its services accept until Pingora's
/// shutdown; their connections run on until then, and are dropped (cut) with
/// the runtime.
fn run_worker<A: ServerApp + Send + Sync + 'static>(
    mut services: Vec<Service<A>>,
    fds: ListenFds,
    shutdown: ShutdownWatch,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("cannot start a worker's runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let serving = services
            .iter_mut()
            .map(|service| service.start_service(Some(fds.clone()), shutdown.clone(), 1));
        futures::future::join_all(serving).await;
        let _ = stop.await;
    });
}

/// The running workers: dropping it (when Pingora drops the runtime of
/// [`Workers::start_service`], at the end of the shutdown timeout) stops them
/// and waits for their runtimes to go.
struct Running {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> PingoraService for Workers<A> {
    /// Starts the workers, then holds them until Pingora drops this service's runtime.
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let tables = fds
            .ok_or_else(|| io::Error::other("Pingora passed no descriptor table"))
            .and_then(|fds| self.worker_tables(&fds));
        let tables = match tables {
            Ok(tables) => tables,
            Err(e) => {
                log::error!("{}: {e}", self.name);
                log::logger().flush();
                std::process::exit(1);
            }
        };
        let mut running = Running {
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for (index, (services, fds)) in self.workers.drain(..).zip(tables).enumerate() {
            let (stop, stopped) = oneshot::channel();
            let shutdown = shutdown.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{index}", self.name))
                .spawn(move || run_worker(services, fds, shutdown, stopped));
            match spawned {
                Ok(thread) => {
                    running.stops.push(stop);
                    running.threads.push(thread);
                }
                Err(e) => log::error!("{}: cannot start worker {index}: {e}", self.name),
            }
        }
        let _held_until_dropped = running;
        std::future::pending::<()>().await
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The workers run on threads of their own; this service only holds them.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.addresses.clone())
    }
}

/// `count` more descriptors of the open socket `fd`, made by the kernel as it
/// passes `fd` over a Unix socket (`SCM_RIGHTS`): a duplicate of a descriptor
/// known only by its number (as in Pingora's table), without unsafe code.
fn duplicates(fd: RawFd, count: usize) -> io::Result<Vec<RawFd>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let (sender, receiver) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let sent = vec![fd; count];
    sendmsg::<()>(
        sender.as_raw_fd(),
        &[IoSlice::new(&[0])],
        &[ControlMessage::ScmRights(&sent)],
        MsgFlags::empty(),
        None,
    )?;
    let mut byte = [0u8; 1];
    let mut data = [IoSliceMut::new(&mut byte)];
    // Room for the control message's header and `count` descriptors, aligned.
    let mut control = vec![0u8; 64 + count * std::mem::size_of::<RawFd>()];
    let message = recvmsg::<()>(
        receiver.as_raw_fd(),
        &mut data,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for received in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = received {
            if fds.len() == count {
                return Ok(fds);
            }
        }
    }
    Err(io::Error::other(format!(
        "duplicating listening socket {fd}: not all of {count} copies came back"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{getsockname, SockaddrIn};
    use std::net::{SocketAddr, TcpStream};

    /// Copies are descriptors of the same socket, which stays open through them.
    #[test]
    fn duplicates_are_descriptors_of_the_same_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let copies = duplicates(listener.as_raw_fd(), 3).unwrap();
        assert_eq!(copies.len(), 3);
        drop(listener);
        TcpStream::connect(address).expect("the socket still listens");
        for fd in copies {
            let bound: SockaddrIn = getsockname(fd).unwrap();
            assert_eq!(
                SocketAddr::from(std::net::SocketAddrV4::from(bound)),
                address
            );
            nix::unistd::close(fd).unwrap();
        }
    }
}
