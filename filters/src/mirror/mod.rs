//! Mirroring: copies of live requests sent to a canary pool, fire-and-forget.
//!
//! The primary request never waits on its copy. A copy is admitted by a
//! [`gate::Gate`] (a concurrency cap and a bounded queue), fed the request
//! body through a [`feed`] that is bounded in bytes, and dropped whole when
//! either bound is hit, so a slow or dead mirror costs the primary nothing
//! but a counter.

pub mod compare;
pub mod feed;
pub mod gate;
