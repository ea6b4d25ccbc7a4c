//! TLS on both sides, on rustls (with ring, as Pingora's `rustls` feature).
//!
//! - [`material`]: reading PEM certificates and keys, checked before use, so a
//!   bad file is an error with its key path (in `trident check` too), never a
//!   panic inside Pingora.
//! - [`downstream`]: client-facing TLS. Trident does the handshake itself, in
//!   its connection handling (`crate::connection`), within the header timeout;
//!   certificates are picked by SNI and re-read when their files change.
//! - [`identity`]: the identity a verified client certificate names.
//! - [`upstream`]: TLS to Triton, for proxied calls (Pingora's connector) and
//!   for health checks, load scrapes and mirror copies (a rustls client config).

pub mod downstream;
pub mod identity;
pub mod material;
pub mod upstream;
