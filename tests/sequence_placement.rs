//! `sequences.placement = "hash"` through two real Trident processes sharing
//! one pool of mock Tritons: each sequence lands on the same endpoint through
//! either, on both protocols, with no state shared between them, and taking an
//! endpoint out moves only the sequences that were on it.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use http_body_util::Full;

/// Two Tridents over one pool `p` of `mocks`, placing sequences by hash. Round
/// robin: without the hash, the two would disagree.
async fn fleet(mocks: &[&MockTriton]) -> [Trident; 2] {
    let endpoints: Vec<String> = mocks.iter().map(|m| endpoint(m)).collect();
    let body = format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[pools.balancer]\nstrategy = \"round_robin\"\n\
         [pools.sequences]\nplacement = \"hash\"\n[[routes]]\nmodel = \"m\"\npool = \"p\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoints.join(", ")
    );
    [Trident::start(&body).await, Trident::start(&body).await]
}

/// The mock serving an HTTP request of sequence `id` sent through `trident`.
async fn http_step(trident: &Trident, id: u64, start: bool, end: bool) -> String {
    let url = trident.http_url("/v2/models/m/infer");
    let (status, headers, body) =
        post(&http1_client(), &url, &[], sequence_json(id, start, end)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    header(&headers, "x-mock-backend").to_owned()
}

async fn grpc_step(client: &mut GrpcClient, id: i64, start: bool, end: bool) -> String {
    let response = client.model_infer(grpc_sequence(id, start, end)).await;
    backend(&response.expect("gRPC sequence step"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tridents_place_each_sequence_on_the_same_endpoint() {
    let mut mocks = Vec::new();
    for name in ["a1", "b1", "c1"] {
        mocks.push(mock(name, &["m"]).await);
    }
    let [one, two] = fleet(&mocks.iter().collect::<Vec<_>>()).await;

    // HTTP: started through one, carried on through the other, ended through the first.
    let mut homes = BTreeMap::new();
    for id in 1..=30u64 {
        let home = http_step(&one, id, true, false).await;
        for step in 0..3 {
            assert_eq!(http_step(&two, id, false, false).await, home, "{id}/{step}");
        }
        assert_eq!(http_step(&one, id, false, true).await, home, "{id} end");
        homes.insert(id, home);
    }
    let used: BTreeSet<&String> = homes.values().collect();
    assert!(used.len() > 1, "sequences spread over the pool: {used:?}");

    // gRPC: each proxy starts its own half, and the other carries on.
    let mut clients = [
        common::client(one.grpc_url()).await,
        common::client(two.grpc_url()).await,
    ];
    let mut grpc_used = BTreeSet::new();
    for id in 1000..1030i64 {
        let first = usize::from(id % 2 == 0);
        let home = grpc_step(&mut clients[first], id, true, false).await;
        for step in 0..3 {
            let other = &mut clients[1 - first];
            assert_eq!(
                grpc_step(other, id, false, step == 2).await,
                home,
                "{id}/{step}"
            );
        }
        grpc_used.insert(home);
    }
    assert!(grpc_used.len() > 1, "{grpc_used:?}");
    // The same id on both protocols is the same sequence: HTTP's id 5 and gRPC's agree.
    let grpc_home = grpc_step(&mut clients[1], 5, true, true).await;
    assert_eq!(&grpc_home, &homes[&5]);

    // c1 leaves (drained on both proxies): only the sequences it had move.
    for trident in [&one, &two] {
        let uri = format!(
            "http://{}/pools/p/endpoints/{}/drain",
            trident.admin, mocks[2].http_addr
        );
        let request = http::Request::post(uri).body(Full::default()).unwrap();
        assert_eq!(send(&http1_client(), request).await.0, 200);
    }
    for (&id, home) in &homes {
        let now = http_step(&two, id, true, true).await;
        if home == "c1" {
            assert_ne!(now, "c1", "sequence {id} leaves c1");
        } else {
            assert_eq!(&now, home, "sequence {id} stays where it was");
        }
        assert_eq!(
            http_step(&one, id, true, true).await,
            now,
            "{id}: both agree"
        );
    }
}
