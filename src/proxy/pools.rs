//! Pools at run time: each endpoint's upstream peer, ready to hand to Pingora.

use std::net::SocketAddr;

use filters::round_robin::RoundRobin;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{self, Endpoint};
use crate::protocol::Protocol;

/// One pool's endpoints, per protocol.
pub struct Pool {
    pub name: String,
    http: Peers,
    grpc: Peers,
}

/// The endpoints of one protocol, with the balancer choosing among them.
struct Peers {
    peers: Vec<HttpPeer>,
    balancer: RoundRobin,
}

impl Pool {
    pub fn new(pool: &config::Pool) -> Self {
        let peers = |address: fn(&Endpoint) -> Option<SocketAddr>, protocol: Protocol| {
            let peers: Vec<HttpPeer> = pool
                .endpoints
                .iter()
                .filter_map(address)
                .map(|addr| peer(pool, addr, protocol))
                .collect();
            Peers {
                balancer: RoundRobin::new(peers.len()),
                peers,
            }
        };
        Pool {
            name: pool.name.clone(),
            http: peers(|e| e.http, Protocol::Http),
            grpc: peers(|e| e.grpc, Protocol::Grpc),
        }
    }

    /// The peer for the next request of `protocol`, or `None` when this pool has
    /// no endpoint speaking it.
    pub fn pick(&self, protocol: Protocol) -> Option<Box<HttpPeer>> {
        let peers = match protocol {
            Protocol::Http => &self.http,
            Protocol::Grpc => &self.grpc,
        };
        peers
            .balancer
            .pick()
            .map(|i| Box::new(peers.peers[i].clone()))
    }
}

fn peer(pool: &config::Pool, addr: SocketAddr, protocol: Protocol) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    let options = &mut peer.options;
    options.connection_timeout = Some(pool.connect_timeout);
    options.read_timeout = pool.read_timeout;
    options.idle_timeout = Some(pool.idle_timeout);
    options.tcp_keepalive = None;
    match protocol {
        // Triton's HTTP endpoint speaks HTTP/1.1 only; h2 clients are translated.
        Protocol::Http => options.set_http_version(1, 1),
        Protocol::Grpc => {
            options.set_http_version(2, 2);
            // Pingora's default of one stream per connection would open a
            // connection per concurrent call; multiplex instead.
            options.max_h2_streams = pool.max_h2_streams;
        }
    }
    peer
}
