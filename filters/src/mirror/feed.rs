//! The request body of a mirror copy, handed over chunk by chunk as the
//! primary forwards it. Chunks are shared (`Bytes`), never copied; the bytes
//! not yet taken by the mirror are bounded, per copy and across all copies
//! (a shared [`Limit`] in bytes), and going over either bound abandons the
//! copy instead of making the primary wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::circuit_breaker::{Limit, Permit};

enum Message {
    /// A chunk, holding its bytes of the shared budget until taken (or dropped
    /// with the channel).
    Chunk(Bytes, Permit),
    End,
    Abandoned(Abandoned),
}

/// The primary's end: never blocks.
pub struct FeedSender {
    tx: Option<UnboundedSender<Message>>,
    buffered: Arc<AtomicUsize>,
    limit: usize,
    budget: Arc<Limit>,
}

/// The mirror's end.
pub struct FeedReceiver {
    rx: UnboundedReceiver<Message>,
    buffered: Arc<AtomicUsize>,
    ended: bool,
}

/// Why a copy's body stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// The mirror fell more than the limit behind the primary.
    Overflow,
    /// The copies together hold as many body bytes as the process allows.
    OverBudget,
    /// The primary's request ended without its whole body (client gone, error).
    Cut,
    /// The mirror stopped reading (it already answered, or failed).
    MirrorGone,
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Abandoned::Overflow => "the mirror fell too far behind the primary",
            Abandoned::OverBudget => "mirror copies hold their whole body memory budget",
            Abandoned::Cut => "the primary request ended before its body did",
            Abandoned::MirrorGone => "the mirror stopped reading the body",
        })
    }
}

impl std::error::Error for Abandoned {}

/// A feed holding at most `limit` bytes the mirror has not taken yet, and
/// those only while `budget` (shared by every feed) has room for them.
pub fn channel(limit: usize, budget: Arc<Limit>) -> (FeedSender, FeedReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let buffered = Arc::new(AtomicUsize::new(0));
    (
        FeedSender {
            tx: Some(tx),
            buffered: buffered.clone(),
            limit,
            budget,
        },
        FeedReceiver {
            rx,
            buffered,
            ended: false,
        },
    )
}

impl FeedSender {
    /// Hands a chunk over. Past the limit or the budget the copy is abandoned:
    /// this and every later call fails, and the mirror sees why.
    pub fn send(&mut self, chunk: Bytes) -> Result<(), Abandoned> {
        let tx = self.tx.as_ref().ok_or(Abandoned::Overflow)?;
        let len = chunk.len();
        let before = self.buffered.fetch_add(len, Ordering::AcqRel);
        let permit = if before + len > self.limit {
            Err(Abandoned::Overflow)
        } else {
            self.budget.try_acquire_n(len).ok_or(Abandoned::OverBudget)
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(why) => {
                let _ = tx.send(Message::Abandoned(why));
                self.tx = None;
                return Err(why);
            }
        };
        if tx.send(Message::Chunk(chunk, permit)).is_err() {
            self.tx = None;
            return Err(Abandoned::MirrorGone);
        }
        Ok(())
    }

    /// The body is complete.
    pub fn finish(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Message::End);
        }
    }

    /// Whether the copy is still being fed.
    pub fn is_open(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }
}

impl FeedReceiver {
    /// The next chunk; `None` once the body is complete; an error if it never will be.
    pub async fn next(&mut self) -> Option<Result<Bytes, Abandoned>> {
        if self.ended {
            return None;
        }
        match self.rx.recv().await {
            Some(Message::Chunk(chunk, _budget)) => {
                self.buffered.fetch_sub(chunk.len(), Ordering::AcqRel);
                Some(Ok(chunk))
            }
            Some(Message::End) => {
                self.ended = true;
                None
            }
            Some(Message::Abandoned(why)) => {
                self.ended = true;
                Some(Err(why))
            }
            None => {
                self.ended = true;
                Some(Err(Abandoned::Cut))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlimited() -> Arc<Limit> {
        Limit::new(usize::MAX)
    }

    #[tokio::test]
    async fn chunks_pass_in_order_without_copies() {
        let (mut tx, mut rx) = channel(100, unlimited());
        let chunk = Bytes::from_static(b"0123456789");
        tx.send(chunk.clone()).unwrap();
        tx.send(Bytes::from_static(b"ab")).unwrap();
        tx.finish();
        let first = rx.next().await.unwrap().unwrap();
        assert_eq!(first.as_ptr(), chunk.as_ptr());
        assert_eq!(rx.next().await.unwrap().unwrap(), "ab");
        assert!(rx.next().await.is_none());
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn the_limit_counts_only_bytes_not_yet_taken() {
        let (mut tx, mut rx) = channel(10, unlimited());
        tx.send(Bytes::from_static(b"12345678")).unwrap();
        rx.next().await.unwrap().unwrap();
        tx.send(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(
            tx.send(Bytes::from_static(b"123")),
            Err(Abandoned::Overflow)
        );
        assert!(!tx.is_open());
        assert_eq!(tx.send(Bytes::from_static(b"1")), Err(Abandoned::Overflow));
        drop(tx);
        assert_eq!(rx.next().await.unwrap().unwrap(), "12345678");
        assert_eq!(rx.next().await.unwrap(), Err(Abandoned::Overflow));
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_sender_cuts_the_body() {
        let (mut tx, mut rx) = channel(10, unlimited());
        tx.send(Bytes::from_static(b"1")).unwrap();
        drop(tx);
        assert_eq!(rx.next().await.unwrap().unwrap(), "1");
        assert_eq!(rx.next().await.unwrap(), Err(Abandoned::Cut));
    }

    #[tokio::test]
    async fn a_gone_mirror_closes_the_feed() {
        let (mut tx, rx) = channel(10, unlimited());
        drop(rx);
        assert!(!tx.is_open());
        assert_eq!(
            tx.send(Bytes::from_static(b"1")),
            Err(Abandoned::MirrorGone)
        );
    }

    #[tokio::test]
    async fn the_shared_budget_bounds_every_feed_together_and_frees_taken_bytes() {
        let budget = Limit::new(10);
        let (mut a, mut a_rx) = channel(100, budget.clone());
        let (mut b, b_rx) = channel(100, budget.clone());
        a.send(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(
            b.send(Bytes::from_static(b"12345")),
            Err(Abandoned::OverBudget)
        );
        assert!(!b.is_open());
        drop((b, b_rx));
        assert_eq!(a_rx.next().await.unwrap().unwrap(), "123456");
        assert_eq!(budget.held(), 0);
        a.send(Bytes::from_static(b"1234567890")).unwrap();
        // Chunks dropped untaken (the mirror gone) give their bytes back too.
        drop((a, a_rx));
        assert_eq!(budget.held(), 0);
    }
}
