use std::io::Write;

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use prost::Message;

use super::*;
use crate::protocol::grpc::{peek_model, Peek};
use crate::protocol::kserve::ModelInferRequest;
use crate::protocol::testing::{frame, string_field, varint};

/// How the proxy judges a body: routed on the peeked name, then every message held to it.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Routed(Option<String>),
    Refused,
}

struct Refused;

impl From<Violation> for Refused {
    fn from(_: Violation) -> Self {
        Refused
    }
}

/// Peeks `body` whole, then feeds it to a check cut at `cuts` (ascending).
fn judge(body: &[u8], encoding: Encoding, cuts: &[usize]) -> Outcome {
    let routed = match peek_model(body, 1, encoding, true) {
        Peek::Model(name) => Some(name),
        Peek::Absent => None,
        _ => return Outcome::Refused,
    };
    let mut check = ModelCheck::new(1, encoding);
    let mut start = 0;
    for (i, &cut) in cuts.iter().chain([body.len()].iter()).enumerate() {
        let last = i == cuts.len();
        let fed = check.feed(&body[start..cut], last, |name| {
            if name == routed.as_deref() {
                Ok(())
            } else {
                Err(Refused)
            }
        });
        if fed.is_err() {
            return Outcome::Refused;
        }
        start = cut;
    }
    Outcome::Routed(routed)
}

/// What the upstream executes: each message's name as prost decodes it, or `None` if a
/// message does not decode (then nothing of it runs, whatever Trident decided).
fn decoded_names(messages: &[Vec<u8>]) -> Option<Vec<String>> {
    messages
        .iter()
        .map(|m| {
            ModelInferRequest::decode(m.as_slice())
                .ok()
                .map(|r| r.model_name)
        })
        .collect()
}

const NAMES: [&str; 5] = ["", "simple", "resnet50", "a", "resnet50\u{0}"];

/// A random `ModelInferRequest` encoding: the name field absent, once or twice (maybe
/// empty), anywhere among known and unknown fields of every wire type, packed and
/// unpacked shapes, varints written longer than needed.
fn random_message(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut m = Vec::new();
    let names = match rng.u8(0..10) {
        0 => 0,
        1 | 2 => 2,
        _ => 1,
    };
    let mut fields: Vec<u8> = (0..rng.usize(0..6)).map(|_| rng.u8(2..12)).collect();
    for _ in 0..names {
        let at = rng.usize(..=fields.len());
        fields.insert(at, 1);
    }
    for field in fields {
        match field {
            1 => string_field(1, NAMES[rng.usize(..NAMES.len())].as_bytes(), &mut m),
            2 | 3 => string_field(u32::from(field), b"7", &mut m),
            5 => {
                let mut tensor = Vec::new();
                string_field(1, b"INPUT0", &mut tensor);
                let dims = [1u64, 3, 224];
                if rng.bool() {
                    let mut packed = Vec::new();
                    dims.iter().for_each(|&d| varint(d, &mut packed));
                    string_field(3, &packed, &mut tensor);
                } else {
                    for d in dims {
                        varint(3 << 3, &mut tensor);
                        varint(d, &mut tensor);
                    }
                }
                string_field(5, &tensor, &mut m);
            }
            7 => string_field(7, &vec![rng.u8(..); rng.usize(0..300)], &mut m),
            // Unknown fields, one wire type each.
            8 => {
                varint(40 << 3, &mut m);
                varint(rng.u64(..), &mut m);
            }
            9 => {
                // A varint key written in more bytes than it needs.
                m.extend_from_slice(&[(41 << 3 | 5) as u8 | 0x80, 0x82, 0x00]);
                m.extend_from_slice(&rng.u32(..).to_le_bytes());
            }
            10 => {
                varint(42 << 3 | 1, &mut m);
                m.extend_from_slice(&rng.u64(..).to_le_bytes());
            }
            _ => string_field(43, &vec![1u8; rng.usize(0..40)], &mut m),
        }
    }
    m
}

fn compress(encoding: Encoding, message: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Gzip => {
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(message).unwrap();
            frame(1, &e.finish().unwrap())
        }
        Encoding::Deflate => {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
            e.write_all(message).unwrap();
            frame(1, &e.finish().unwrap())
        }
        _ => frame(0, message),
    }
}

/// The property: whatever the encoding and however the body is cut, a body
/// Trident lets through is executed as the model it was routed on.
#[test]
fn the_routed_model_is_the_model_prost_decodes() {
    let mut rng = fastrand::Rng::with_seed(13);
    let (mut routed, mut refused) = (0, 0);
    for case in 0..6000 {
        let encoding = match case % 6 {
            0 => Encoding::Gzip,
            1 => Encoding::Deflate,
            _ => Encoding::Identity,
        };
        let messages: Vec<Vec<u8>> = (0..1 + usize::from(case % 5 == 0))
            .map(|_| random_message(&mut rng))
            .collect();
        let body: Vec<u8> = messages
            .iter()
            .flat_map(|m| compress(encoding, m))
            .collect();
        let whole = judge(&body, encoding, &[]);
        // Every single cut, for small bodies; random cuts into many chunks for all.
        let single_cuts: Vec<Vec<usize>> = if body.len() < 400 && encoding == Encoding::Identity {
            (0..=body.len()).map(|cut| vec![cut]).collect()
        } else {
            Vec::new()
        };
        let random_cuts = (0..4).map(|_| {
            let mut cuts: Vec<usize> = (0..rng.usize(1..8))
                .map(|_| rng.usize(..=body.len()))
                .collect();
            cuts.sort_unstable();
            cuts
        });
        for cuts in single_cuts.into_iter().chain(random_cuts) {
            assert_eq!(judge(&body, encoding, &cuts), whole, "cuts {cuts:?}");
        }
        let Outcome::Routed(model) = whole else {
            refused += 1;
            continue;
        };
        routed += 1;
        if let Some(names) = decoded_names(&messages) {
            let expected = model.unwrap_or_default();
            assert!(
                names.iter().all(|n| *n == expected),
                "routed as {expected:?}, decoded as {names:?}: {messages:?}"
            );
        }
    }
    // The generator reaches both outcomes often.
    assert!(
        routed > 1000 && refused > 1000,
        "{routed} routed, {refused} refused"
    );
}

fn named(name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    string_field(1, name.as_bytes(), &mut m);
    string_field(7, &[9; 64], &mut m);
    m
}

#[test]
fn a_second_name_is_refused_as_soon_as_its_key_arrives() {
    let mut m = named("simple");
    let key_at = m.len();
    string_field(1, b"resnet50", &mut m);
    let body = frame(0, &m);
    let mut check = ModelCheck::new(1, Encoding::Identity);
    let before = check.feed(&body[..5 + key_at], false, |_| Ok::<_, Violation>(()));
    assert_eq!(before, Ok(()));
    let at_key = check.feed(&body[5 + key_at..5 + key_at + 2], false, |_| Ok(()));
    assert_eq!(at_key, Err(Violation::DuplicateName));
}

#[test]
fn every_message_of_a_stream_is_reported() {
    let body: Vec<u8> = ["a", "b", ""]
        .iter()
        .flat_map(|n| frame(0, &named(n)))
        .chain(frame(0, &[]))
        .collect();
    let mut seen = Vec::new();
    let mut check = ModelCheck::new(1, Encoding::Identity);
    for byte in body.chunks(1) {
        check
            .feed(byte, false, |name| {
                seen.push(name.map(str::to_owned));
                Ok::<_, Violation>(())
            })
            .unwrap();
    }
    assert_eq!(seen, [Some("a".into()), Some("b".into()), None, None]);
}

#[test]
fn bodies_no_decoder_reads_like_trident_are_refused() {
    let gz = |m: &[u8]| compress(Encoding::Gzip, m);
    let mut two_members = gz(&named("a"));
    let second = gz(&named("b"));
    two_members.extend_from_slice(&second[5..]);
    let len = (two_members.len() - 5) as u32;
    two_members[1..5].copy_from_slice(&len.to_be_bytes());
    let cases: [(&str, Vec<u8>, Encoding, Violation); 6] = [
        (
            "unknown encoding",
            gz(&named("a")),
            Encoding::Unsupported,
            Violation::UnreadableEncoding,
        ),
        (
            "gzip members after the first",
            two_members,
            Encoding::Gzip,
            Violation::Malformed("bytes after the compressed gRPC message's end"),
        ),
        (
            "group",
            frame(0, &[0x13, 0x14]),
            Encoding::Identity,
            Violation::Malformed("unsupported protobuf wire type"),
        ),
        (
            "name as varint",
            frame(0, &[0x08, 0x01]),
            Encoding::Identity,
            Violation::Malformed("the model name is not a string"),
        ),
        (
            "field overruns message",
            frame(0, &[0x3a, 0x05, 1]),
            Encoding::Identity,
            Violation::Malformed("truncated protobuf field"),
        ),
        (
            "11-byte varint",
            frame(
                0,
                &[
                    0x40, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
            ),
            Encoding::Identity,
            Violation::Malformed("invalid protobuf varint"),
        ),
    ];
    for (case, body, encoding, violation) in cases {
        let fed = ModelCheck::new(1, encoding).feed(&body, true, |_| Ok(()));
        assert_eq!(fed, Err(violation), "{case}");
    }
    let truncated = frame(0, &named("a"));
    let fed = ModelCheck::new(1, Encoding::Identity).feed(&truncated[..20], true, |_| Ok(()));
    assert_eq!(
        fed,
        Err(Violation::Malformed("body ends inside a gRPC message"))
    );
}

#[test]
fn tensor_bytes_are_skipped_without_being_held() {
    let mut m = named("resnet50");
    string_field(7, &vec![5u8; 8 << 20], &mut m);
    let body = frame(0, &m);
    let mut check = ModelCheck::new(1, Encoding::Identity);
    for chunk in body.chunks(16 * 1024) {
        check
            .feed(chunk, false, |_| Ok::<_, Violation>(()))
            .unwrap();
        if let Frame::Body {
            payload: Payload::Plain(fields),
            ..
        } = &check.frame
        {
            assert!(fields.name.as_ref().map_or(0, Vec::capacity) <= 8);
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..20_000 {
        let body: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
        for encoding in [Encoding::Identity, Encoding::Gzip, Encoding::Deflate] {
            let _ =
                ModelCheck::new(2, encoding).feed(&body, rng.bool(), |_| Ok::<_, Violation>(()));
        }
    }
}
