//! Choosing which requests a canary takes: a weighted split of a route's
//! traffic across sides (pools or model versions), and the sample of requests
//! a mirror copies.
//!
//! A side takes a request when its [`Rule`] matches (a header, or a claim of
//! the verified JWT), or else by its share of a roll in `[0, 100)`. Requests
//! of a Triton sequence roll a hash of the sequence instead of a random
//! number, so every request of a sequence lands on the same side, in every
//! proxy of a fleet, without shared state.

use http::{HeaderMap, HeaderName};

use crate::jwt::Claims;

/// What a request must carry to be taken regardless of the shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The header is present (with this value, when one is given).
    Header {
        name: HeaderName,
        value: Option<String>,
    },
    /// The verified JWT has the claim (equal to this value, or containing it
    /// when the claim is an array, when one is given).
    Claim { name: String, value: Option<String> },
}

impl Rule {
    /// Whether a request with `headers` and `claims` matches.
    pub fn matches(&self, headers: &HeaderMap, claims: Option<&Claims>) -> bool {
        match self {
            Rule::Header { name, value } => headers.get_all(name).iter().any(|v| {
                value
                    .as_ref()
                    .is_none_or(|want| v.as_bytes() == want.as_bytes())
            }),
            Rule::Claim { name, value } => {
                let Some(claim) = claims.and_then(|c| c.get(name)) else {
                    return false;
                };
                let Some(want) = value else { return true };
                let equal = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => s == want,
                    // A number or boolean claim matches its JSON spelling.
                    other => {
                        serde_json::from_str::<serde_json::Value>(want).is_ok_and(|w| w == *other)
                    }
                };
                match claim {
                    serde_json::Value::Array(items) => items.iter().any(equal),
                    single => equal(single),
                }
            }
        }
    }
}

/// Which requests one side (or one mirror) takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub rule: Option<Rule>,
    /// Share of the requests no rule took, in percent.
    pub percent: f64,
}

/// Where a request's roll comes from: a sequence's requests must agree.
#[derive(Debug, Clone, Copy)]
pub enum Roll {
    /// An independent request: any uniform number.
    Random,
    /// A request of a sequence, identified by a stable hash.
    Sticky(u64),
}

impl Roll {
    /// A number in `[0, 100)`.
    fn percent(self) -> f64 {
        let bits = match self {
            Roll::Random => fastrand::u64(..),
            Roll::Sticky(hash) => mix(hash),
        };
        // The top 53 bits make an exact f64 fraction in [0, 1).
        (bits >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}

/// A stable 64-bit hash of `parts`, for [`Roll::Sticky`]: the same in every
/// process and release, so a fleet of proxies agrees.
pub fn sticky_hash(parts: &[&[u8]]) -> u64 {
    // FNV-1a, with each part's length mixed in so ("ab","c") ≠ ("a","bc").
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in (part.len() as u64).to_le_bytes().iter().chain(part.iter()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Selector {
    /// Whether this selector alone (a mirror) takes the request.
    pub fn selects(&self, headers: &HeaderMap, claims: Option<&Claims>, roll: Roll) -> bool {
        self.rule_matches(headers, claims) || (self.percent > 0.0 && roll.percent() < self.percent)
    }

    fn rule_matches(&self, headers: &HeaderMap, claims: Option<&Claims>) -> bool {
        self.rule
            .as_ref()
            .is_some_and(|r| r.matches(headers, claims))
    }
}

/// The sides a route's traffic is split across, besides the route's own pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    pub sides: Vec<Selector>,
}

impl Split {
    /// The side that takes the request, `None` for the route's own pool: the
    /// first side whose rule matches, else the one whose share the roll falls in.
    pub fn choose(
        &self,
        headers: &HeaderMap,
        claims: Option<&Claims>,
        roll: Roll,
    ) -> Option<usize> {
        if let Some(i) = self
            .sides
            .iter()
            .position(|s| s.rule_matches(headers, claims))
        {
            return Some(i);
        }
        if self.sides.iter().all(|s| s.percent <= 0.0) {
            return None;
        }
        let mut roll = roll.percent();
        for (i, side) in self.sides.iter().enumerate() {
            if roll < side.percent {
                return Some(i);
            }
            roll -= side.percent;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderValue;
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    use super::*;
    use crate::jwt::tests::{sign, NOW, SECRET};
    use crate::jwt::{KeySet, ValidationSettings, Verifier};

    fn claims(mut value: serde_json::Value) -> Arc<Claims> {
        value["exp"] = json!(NOW + 3600);
        Verifier::new(ValidationSettings::default(), KeySet::hmac(SECRET))
            .verify(&sign(Algorithm::HS256, &value), NOW)
            .unwrap()
    }

    fn header_rule(value: Option<&str>) -> Rule {
        Rule::Header {
            name: HeaderName::from_static("x-canary"),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn header_rules_match_presence_or_value() {
        let mut headers = HeaderMap::new();
        assert!(!header_rule(None).matches(&headers, None));
        headers.insert("x-canary", HeaderValue::from_static("yes"));
        assert!(header_rule(None).matches(&headers, None));
        assert!(header_rule(Some("yes")).matches(&headers, None));
        assert!(!header_rule(Some("no")).matches(&headers, None));
    }

    #[test]
    fn claim_rules_match_strings_numbers_and_arrays() {
        let rule = |value: Option<&str>| Rule::Claim {
            name: "cohort".into(),
            value: value.map(str::to_owned),
        };
        let headers = HeaderMap::new();
        let beta = claims(json!({"cohort": "beta"}));
        assert!(rule(None).matches(&headers, Some(&beta)));
        assert!(rule(Some("beta")).matches(&headers, Some(&beta)));
        assert!(!rule(Some("alpha")).matches(&headers, Some(&beta)));
        let many = claims(json!({"cohort": ["alpha", "beta"]}));
        assert!(rule(Some("beta")).matches(&headers, Some(&many)));
        let number = claims(json!({"cohort": 7}));
        assert!(rule(Some("7")).matches(&headers, Some(&number)));
        assert!(!rule(None).matches(&headers, Some(&claims(json!({})))));
        assert!(!rule(None).matches(&headers, None));
    }

    #[test]
    fn rules_win_over_shares() {
        let split = Split {
            sides: vec![
                Selector {
                    rule: None,
                    percent: 100.0,
                },
                Selector {
                    rule: Some(header_rule(None)),
                    percent: 0.0,
                },
            ],
        };
        let mut headers = HeaderMap::new();
        assert_eq!(split.choose(&headers, None, Roll::Random), Some(0));
        headers.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(split.choose(&headers, None, Roll::Random), Some(1));
    }

    #[test]
    fn shares_land_within_statistical_bounds() {
        fastrand::seed(11);
        let split = Split {
            sides: vec![
                Selector {
                    rule: None,
                    percent: 10.0,
                },
                Selector {
                    rule: None,
                    percent: 5.0,
                },
            ],
        };
        let headers = HeaderMap::new();
        let n = 100_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            match split.choose(&headers, None, Roll::Random) {
                Some(i) => counts[i] += 1,
                None => counts[2] += 1,
            }
        }
        // Within 5 standard deviations of the binomial mean.
        for (count, p) in counts.iter().zip([0.10, 0.05, 0.85]) {
            let mean = n as f64 * p;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((*count as f64 - mean).abs() < 5.0 * sd, "{counts:?}");
        }
    }

    #[test]
    fn sequences_stick_and_spread() {
        let split = Split {
            sides: vec![Selector {
                rule: None,
                percent: 30.0,
            }],
        };
        let headers = HeaderMap::new();
        let mut taken = 0;
        for id in 0..10_000u64 {
            let hash = sticky_hash(&[b"model", &id.to_le_bytes()]);
            let first = split.choose(&headers, None, Roll::Sticky(hash));
            for _ in 0..3 {
                assert_eq!(split.choose(&headers, None, Roll::Sticky(hash)), first);
            }
            taken += usize::from(first.is_some());
        }
        assert!((2_700..3_300).contains(&taken), "{taken}");
    }

    #[test]
    fn sticky_hashes_separate_parts() {
        assert_ne!(sticky_hash(&[b"ab", b"c"]), sticky_hash(&[b"a", b"bc"]));
        assert_eq!(sticky_hash(&[b"m", b"1"]), sticky_hash(&[b"m", b"1"]));
    }

    #[test]
    fn selectors_take_rule_matches_and_their_share() {
        let headers = HeaderMap::new();
        let none = Selector {
            rule: None,
            percent: 0.0,
        };
        let all = Selector {
            rule: None,
            percent: 100.0,
        };
        for _ in 0..100 {
            assert!(!none.selects(&headers, None, Roll::Random));
            assert!(all.selects(&headers, None, Roll::Random));
        }
    }
}
