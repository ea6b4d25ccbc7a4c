"""Test certificates for the TLS checks, made with the `openssl` CLI in a session tmp dir.

    ca            "Trident conformance CA": signs everything below except other_client
    trident       server cert for Trident's listeners   SAN DNS:localhost, IP:127.0.0.1
    trident_alt   second server cert, chosen by SNI     SAN DNS:alt.trident.test
    triton        server cert for Triton T's gRPC port  SAN DNS:triton.internal, IP:127.0.0.1
    client        tritonclient -> Trident (mTLS)        CN/SAN conformance-client
    proxy         Trident -> Triton T (mTLS)            CN/SAN trident-proxy
    other_ca      a CA nobody trusts
    other_client  client cert signed by other_ca        CN/SAN stranger-client

Keys are EC P-256 in PKCS#8 PEM. Every file is `<name>.pem` / `<name>-key.pem`.
"""

import dataclasses
import pathlib
import shutil
import subprocess

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
DAYS = "7"

CA_EXT = """basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

LEAF_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = {eku}
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

CLIENT_NAME = "conformance-client"
PROXY_NAME = "trident-proxy"
STRANGER_NAME = "stranger-client"
TRITON_NAME = "triton.internal"
ALT_NAME = "alt.trident.test"

# name: (issuer, subject CN, extendedKeyUsage, subjectAltName)
LEAVES = {
    "trident": ("ca", "localhost", "serverAuth", "DNS:localhost, IP:127.0.0.1"),
    "trident_alt": ("ca", ALT_NAME, "serverAuth", f"DNS:{ALT_NAME}"),
    "triton": ("ca", TRITON_NAME, "serverAuth", f"DNS:{TRITON_NAME}, IP:127.0.0.1"),
    "client": ("ca", CLIENT_NAME, "clientAuth", f"DNS:{CLIENT_NAME}"),
    "proxy": ("ca", PROXY_NAME, "clientAuth", f"DNS:{PROXY_NAME}"),
    "other_client": ("other_ca", STRANGER_NAME, "clientAuth", f"DNS:{STRANGER_NAME}"),
}


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert: pathlib.Path
    key: pathlib.Path


def _run(*args, cwd):
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def _key(d, name):
    key = d / f"{name}-key.pem"
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key), cwd=d)
    key.chmod(0o600)
    return key


def _ca(d, name, cn):
    key = _key(d, name)
    cfg = d / f"{name}.cnf"
    cfg.write_text(f"[req]\ndistinguished_name = dn\n[dn]\n[ca_ext]\n{CA_EXT}")
    cert = d / f"{name}.pem"
    _run(
        "req", "-x509", "-new", "-key", str(key), "-subj", f"/O=Trident conformance/CN={cn}",
        "-days", DAYS, "-sha256", "-config", str(cfg), "-extensions", "ca_ext", "-out", str(cert), cwd=d,
    )
    cfg.unlink()
    return KeyPair(cert, key)


def _leaf(d, name, issuer, cn, eku, san):
    key = _key(d, name)
    csr = d / f"{name}.csr"
    _run("req", "-new", "-key", str(key), "-subj", f"/O=Trident conformance/CN={cn}", "-out", str(csr), cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(LEAF_EXT.format(eku=eku, san=san))
    cert = d / f"{name}.pem"
    _run(
        "x509", "-req", "-in", str(csr), "-CA", str(issuer.cert), "-CAkey", str(issuer.key),
        "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", str(ext), "-out", str(cert), cwd=d,
    )
    csr.unlink()
    ext.unlink()
    return KeyPair(cert, key)


def make_certs(d):
    """Write all certificates into directory d; return {name: KeyPair}."""
    d = pathlib.Path(d)
    d.mkdir(parents=True, exist_ok=True)
    out = {
        "ca": _ca(d, "ca", "Trident conformance CA"),
        "other_ca": _ca(d, "other_ca", "Untrusted CA"),
    }
    for name, (issuer, cn, eku, san) in LEAVES.items():
        out[name] = _leaf(d, name, out[issuer], cn, eku, san)
    return out


def verify(ca, cert, purpose):
    """`openssl verify` cert against ca for purpose (sslserver/sslclient); returns (ok, output)."""
    r = subprocess.run(
        [OPENSSL, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca), str(cert)],
        capture_output=True, text=True,
    )
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def san_of(cert):
    """The subjectAltName text of cert, e.g. 'DNS:localhost, IP Address:127.0.0.1'."""
    return _run("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName", cwd=pathlib.Path(cert).parent)
