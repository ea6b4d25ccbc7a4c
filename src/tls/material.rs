//! PEM certificates and private keys, read and checked: a certificate file
//! must hold certificates, a key file a key, and the key must be the one the
//! leaf certificate names.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// The most a certificate or key file may hold: chains are a few KiB; a
/// bigger file is a mistake (a log, a device) and is not read further.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The crypto Trident's TLS uses on both sides (Pingora's: ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of `path`, bounded by [`MAX_PEM_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{} is larger than {MAX_PEM_BYTES} bytes: not a PEM certificate or key",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Every certificate in the PEM file at `path`, in order (a chain: leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    certs_from_pem(&read_file(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every certificate in PEM `bytes`.
pub fn certs_from_pem(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_owned());
    }
    for (i, cert) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| format!("certificate {} is not valid X.509: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The private key in PEM `bytes` (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".to_owned()
        }
        other => format!("not a valid PEM private key: {other}"),
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertKeyError> {
    let chain = certs_from_pem(cert_pem).map_err(CertKeyError::Cert)?;
    let key = key_from_pem(key_pem).map_err(CertKeyError::Key)?;
    certify(chain, key).map_err(CertKeyError::Key)
}

/// The chain and key in `cert_file` and `key_file`, read once and checked to
/// belong together; errors name the file at fault.
pub fn read_pair(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertKeyError> {
    let in_cert = |why| CertKeyError::Cert(format!("{}: {why}", cert_file.display()));
    let in_key = |why| CertKeyError::Key(format!("{}: {why}", key_file.display()));
    let cert = read_file(cert_file).map_err(CertKeyError::Cert)?;
    let key = read_file(key_file).map_err(CertKeyError::Key)?;
    let chain = certs_from_pem(&cert).map_err(in_cert)?;
    let key = key_from_pem(&key).map_err(in_key)?;
    certify(chain.clone(), key.clone_key()).map_err(in_key)?;
    Ok((chain, key))
}

/// The key signing for the chain, if it is the leaf's.
fn certify(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "this key does not belong to the certificate (the leaf's public key differs)".to_owned()
        }
        other => format!("unusable private key: {other}"),
    })
}

/// CA certificates as a store rustls verifies against.
pub fn root_store(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        store
            .add(cert)
            .map_err(|e| format!("certificate {} is not a usable CA certificate: {e}", i + 1))?;
    }
    Ok(store)
}

/// Which of a certificate/key pair is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKeyError {
    Cert(String),
    Key(String),
}

impl std::fmt::Display for CertKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertKeyError::Cert(why) | CertKeyError::Key(why) => f.write_str(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads() {
        let (cert, key) = pair("a.test");
        assert!(certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_as_the_key() {
        let (cert, _) = pair("a.test");
        let (_, other_key) = pair("b.test");
        let err = certified_key(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, CertKeyError::Key(why) if why.contains("does not belong")),
            "{err:?}"
        );
    }

    #[test]
    fn files_without_pem_say_what_is_missing() {
        let (cert, key) = pair("a.test");
        let err = certified_key(b"hello", key.as_bytes()).unwrap_err();
        assert!(matches!(&err, CertKeyError::Cert(why) if why.contains("no PEM certificate")));
        let err = certified_key(cert.as_bytes(), cert.as_bytes()).unwrap_err();
        assert!(matches!(&err, CertKeyError::Key(why) if why.contains("no PEM private key")));
    }

    #[test]
    fn a_certificate_that_is_not_x509_is_refused() {
        let garbage = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let err = certs_from_pem(garbage.as_bytes()).unwrap_err();
        assert!(err.contains("not valid X.509"), "{err}");
    }
}
