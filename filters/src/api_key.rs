//! The `api_key` filter: static keys mapped to tenants.
//!
//! Only SHA-256 digests of keys are kept. A presented key is hashed, its
//! digest's first eight bytes pick candidates, and the full digests are
//! compared in constant time: timing reveals nothing about a stored key.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderName;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::chain::{Denial, DenyReason, Filter, Request, Verdict};

/// The SHA-256 digest of a key.
pub type KeyDigest = [u8; 32];

pub fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// Whether `presented` is the key `stored` is the digest of, in time that does
/// not depend on where they differ.
pub fn matches(stored: &KeyDigest, presented: &KeyDigest) -> bool {
    bool::from(stored.ct_eq(presented))
}

/// Parses the 64 hex digits of a digest.
pub fn parse_digest(hex: &str) -> Result<KeyDigest, String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "expected 64 hex digits, found {} characters",
            bytes.len()
        ));
    }
    if !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err("expected hex digits only".to_owned());
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = hex_value(pair[0]) << 4 | hex_value(pair[1]);
    }
    Ok(out)
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// Digest → tenant.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_prefix: HashMap<u64, Vec<(KeyDigest, Arc<str>)>>,
}

impl KeyTable {
    pub fn new(entries: impl IntoIterator<Item = (KeyDigest, String)>) -> Self {
        let mut by_prefix: HashMap<u64, Vec<(KeyDigest, Arc<str>)>> = HashMap::new();
        for (digest, tenant) in entries {
            by_prefix
                .entry(prefix(&digest))
                .or_default()
                .push((digest, Arc::from(tenant)));
        }
        KeyTable { by_prefix }
    }

    /// The tenant of `key`, if it is one of ours.
    pub fn tenant(&self, key: &[u8]) -> Option<&Arc<str>> {
        let digest = digest(key);
        let candidates = self.by_prefix.get(&prefix(&digest))?;
        let mut found = None;
        for (stored, tenant) in candidates {
            if matches(stored, &digest) {
                found = Some(tenant);
            }
        }
        found
    }
}

fn prefix(digest: &KeyDigest) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
}

pub struct ApiKeySettings {
    pub keys: KeyTable,
    /// Where the key is; `authorization` means `Authorization: Bearer <key>`.
    pub header: HeaderName,
    /// Send the key upstream (default: removed).
    pub forward_key: bool,
    /// Send the tenant upstream in this header (client-sent copies are removed).
    pub tenant_header: Option<HeaderName>,
}

pub struct ApiKeyFilter {
    settings: ApiKeySettings,
}

impl ApiKeyFilter {
    pub fn new(settings: ApiKeySettings) -> Self {
        ApiKeyFilter { settings }
    }

    fn presented<'a>(&self, request: &'a Request<'_>) -> Option<&'a [u8]> {
        let value = request
            .header
            .headers
            .get(&self.settings.header)?
            .as_bytes();
        let key = if self.settings.header == http::header::AUTHORIZATION {
            strip_bearer(value)?
        } else {
            value
        };
        let key = key.trim_ascii();
        (!key.is_empty()).then_some(key)
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

#[async_trait]
impl Filter for ApiKeyFilter {
    async fn request(&self, request: &mut Request<'_>) -> Verdict {
        let settings = &self.settings;
        let Some(key) = self.presented(request) else {
            return Verdict::Deny(Denial::new(
                DenyReason::Unauthenticated,
                format!("missing API key in header '{}'", settings.header),
            ));
        };
        let Some(tenant) = settings.keys.tenant(key).cloned() else {
            return Verdict::Deny(Denial::new(DenyReason::Unauthenticated, "invalid API key"));
        };
        if !settings.forward_key {
            request.header.remove_header(&settings.header);
        }
        if let Some(name) = &settings.tenant_header {
            request.header.remove_header(name);
            // Tenant names come from the config, where they are checked to be valid header values.
            let _ = request.header.insert_header(name.clone(), tenant.as_ref());
        }
        request.identity.tenant = Some(tenant);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Identity;
    use crate::testing::{run, Ran};

    fn table() -> KeyTable {
        KeyTable::new([
            (digest(b"acme-secret"), "acme".to_owned()),
            (
                parse_digest(&hex(&digest(b"globex-secret"))).unwrap(),
                "globex".to_owned(),
            ),
        ])
    }

    fn hex(digest: &KeyDigest) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_map_to_tenants() {
        let keys = table();
        assert_eq!(keys.tenant(b"acme-secret").map(|t| &**t), Some("acme"));
        assert_eq!(keys.tenant(b"globex-secret").map(|t| &**t), Some("globex"));
        assert_eq!(keys.tenant(b"acme-secreT"), None);
        assert_eq!(keys.tenant(b""), None);
    }

    #[test]
    fn digests_parse_from_hex_only() {
        assert!(parse_digest(&"ab".repeat(32)).is_ok());
        assert!(parse_digest(&"AB".repeat(32)).is_ok());
        assert!(parse_digest("abc").is_err());
        assert!(parse_digest(&"zz".repeat(32)).is_err());
        assert!(parse_digest(&"é".repeat(32)).is_err());
        assert!(parse_digest(&"+1".repeat(32)).is_err());
    }

    fn filter(header: &str, forward_key: bool) -> ApiKeyFilter {
        ApiKeyFilter::new(ApiKeySettings {
            keys: table(),
            header: HeaderName::from_bytes(header.as_bytes()).unwrap(),
            forward_key,
            tenant_header: Some(HeaderName::from_static("x-tenant")),
        })
    }

    #[test]
    fn valid_key_sets_the_tenant_and_is_stripped() {
        let Ran {
            verdict,
            header,
            identity,
            ..
        } = run(
            &filter("x-api-key", false),
            &[("x-api-key", "acme-secret"), ("x-tenant", "spoofed")],
            Some("m"),
            Identity::default(),
        );
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(identity.tenant.as_deref(), Some("acme"));
        assert!(header.headers.get("x-api-key").is_none());
        let tenants: Vec<_> = header.headers.get_all("x-tenant").iter().collect();
        assert_eq!(tenants, ["acme"]);
    }

    #[test]
    fn key_can_be_forwarded_and_read_from_a_bearer_header() {
        let Ran {
            verdict, header, ..
        } = run(
            &filter("authorization", true),
            &[("authorization", "bearer globex-secret")],
            Some("m"),
            Identity::default(),
        );
        assert_eq!(verdict, Verdict::Continue);
        assert!(header.headers.get("authorization").is_some());
        let ran = run(
            &filter("authorization", true),
            &[("authorization", "Basic globex-secret")],
            Some("m"),
            Identity::default(),
        );
        assert!(matches!(ran.verdict, Verdict::Deny(_)));
    }

    #[test]
    fn missing_and_wrong_keys_are_unauthenticated() {
        for headers in [&[][..], &[("x-api-key", "")], &[("x-api-key", "nope")]] {
            let ran = run(
                &filter("x-api-key", false),
                headers,
                Some("m"),
                Identity::default(),
            );
            let Verdict::Deny(denial) = ran.verdict else {
                panic!("{headers:?} admitted")
            };
            assert_eq!(denial.reason, DenyReason::Unauthenticated);
            assert!(ran.identity.tenant.is_none());
        }
    }
}
