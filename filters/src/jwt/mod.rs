//! The `jwt` filter: verifies JSON Web Tokens.
//!
//! - [`keys`]: the key set, from a JWKS document or an HMAC secret;
//! - [`verify`]: signature and claim checks on an injected clock, and [`cache`]
//!   of verified tokens, so a repeated token costs a lookup, not a signature check;
//! - [`jwks`]: a JWKS URL refreshed in the background;
//! - [`filter`]: the request-phase adapter (token from a header, claims to
//!   upstream headers, identity for the filters after it).

pub mod cache;
pub mod filter;
pub mod jwks;
pub mod keys;
pub mod verify;

#[cfg(test)]
pub(crate) mod tests;

pub use filter::{JwtFilter, JwtSettings, KeySource, TokenSource};
pub use jsonwebtoken::Algorithm;
pub use jwks::{JwksRefresher, JwksUrlSettings};
pub use keys::KeySet;
pub use verify::{Claims, JwtError, ValidationSettings, Verifier};
