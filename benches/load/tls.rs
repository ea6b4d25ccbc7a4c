//! The one certificate every proxy serves in the `tls` setting, made at run
//! time by the `openssl` command: a self-signed CA and, signed by it, an ECDSA
//! P-256 server certificate for `localhost` and `127.0.0.1`. Each proxy sends
//! the leaf alone and speaks TLS 1.3 only, so that they all do the same work
//! per handshake (one P-256 signature and the key exchange the client picks).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Certificate {
    /// The server certificate (PEM), the leaf alone.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Certificate then key in one file, as haproxy's `crt` takes them.
    pub cert_and_key: PathBuf,
}

impl Certificate {
    /// A fresh CA (`ca.pem`, no client checks it) and server certificate,
    /// written to `dir`.
    pub fn generate(dir: &Path) -> Certificate {
        let file = |name: &str| dir.join(name);
        // Every argument is a word without spaces.
        let openssl = |args: &str| {
            let output = Command::new("openssl")
                .args(args.split(' '))
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("running openssl {args}: {e}"));
            assert!(
                output.status.success(),
                "openssl {args} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let p256 = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        openssl(&format!(
            "req -x509 {p256} -days 2 -keyout ca-key.pem -out ca.pem -subj /CN=trident-load-ca"
        ));
        openssl(&format!(
            "req {p256} -keyout key.pem -out server.csr -subj /CN=localhost"
        ));
        std::fs::write(
            file("server.ext"),
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .expect("write the certificate's extensions");
        openssl(
            "x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -set_serial 2 -days 2 \
             -extfile server.ext -out cert.pem",
        );
        let read = |name: &str| {
            std::fs::read_to_string(file(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
        };
        std::fs::write(
            file("cert-and-key.pem"),
            read("cert.pem") + &read("key.pem"),
        )
        .expect("write cert-and-key.pem");
        Certificate {
            cert: file("cert.pem"),
            key: file("key.pem"),
            cert_and_key: file("cert-and-key.pem"),
        }
    }
}
