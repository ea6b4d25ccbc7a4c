//! Who a verified client certificate says the client is: its first URI
//! subject alternative name (a SPIFFE id, say), else its first DNS name, else
//! its subject's common name.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity of the client certificate a connection's handshake verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

impl ClientIdentity {
    /// From the leaf certificate (DER); `None` if it names no one usable as a
    /// header value.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.clone())
            .unwrap_or_default();
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        });
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());
        let identity = uri.or(dns).or(common_name)?;
        http::HeaderValue::from_str(identity).ok()?;
        Some(Self(identity.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(sans: Vec<SanType>, common_name: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let mut subject = DistinguishedName::new();
        if let Some(cn) = common_name {
            subject.push(DnType::CommonName, cn);
        }
        params.distinguished_name = subject;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn a_uri_name_comes_first_then_dns_then_the_common_name() {
        let spiffe = "spiffe://example.org/ns/a/sa/client";
        let both = cert(
            vec![
                SanType::DnsName("client.example.org".try_into().unwrap()),
                SanType::URI(spiffe.try_into().unwrap()),
            ],
            Some("cn"),
        );
        assert_eq!(ClientIdentity::from_der(&both).unwrap().0, spiffe);
        let dns = cert(
            vec![SanType::DnsName("client.example.org".try_into().unwrap())],
            Some("cn"),
        );
        assert_eq!(
            ClientIdentity::from_der(&dns).unwrap().0,
            "client.example.org"
        );
        let cn = cert(Vec::new(), Some("team-a"));
        assert_eq!(ClientIdentity::from_der(&cn).unwrap().0, "team-a");
        assert_eq!(ClientIdentity::from_der(&cert(Vec::new(), None)), None);
    }
}
