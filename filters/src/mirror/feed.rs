//! The request body of a mirror copy, handed over chunk by chunk as the
//! primary forwards it. Chunks are shared (`Bytes`), never copied; the bytes
//! not yet taken by the mirror are bounded, and going over the bound abandons
//! the copy instead of making the primary wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

enum Message {
    Chunk(Bytes),
    End,
}

/// The primary's end: never blocks.
pub struct FeedSender {
    tx: Option<UnboundedSender<Message>>,
    buffered: Arc<AtomicUsize>,
    limit: usize,
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
    /// The primary's request ended without its whole body (client gone, error).
    Cut,
    /// The mirror stopped reading (it already answered, or failed).
    MirrorGone,
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Abandoned::Overflow => "the mirror fell too far behind the primary",
            Abandoned::Cut => "the primary request ended before its body did",
            Abandoned::MirrorGone => "the mirror stopped reading the body",
        })
    }
}

impl std::error::Error for Abandoned {}

/// A feed holding at most `limit` bytes the mirror has not taken yet.
pub fn channel(limit: usize) -> (FeedSender, FeedReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let buffered = Arc::new(AtomicUsize::new(0));
    (
        FeedSender {
            tx: Some(tx),
            buffered: buffered.clone(),
            limit,
        },
        FeedReceiver {
            rx,
            buffered,
            ended: false,
        },
    )
}

impl FeedSender {
    /// Hands a chunk over. Past the limit the copy is abandoned: this and
    /// every later call fails, and the mirror sees [`Abandoned::Overflow`].
    pub fn send(&mut self, chunk: Bytes) -> Result<(), Abandoned> {
        let tx = self.tx.as_ref().ok_or(Abandoned::Overflow)?;
        let len = chunk.len();
        let before = self.buffered.fetch_add(len, Ordering::AcqRel);
        if before + len > self.limit {
            self.buffered.fetch_add(usize::MAX / 2, Ordering::AcqRel);
            self.tx = None;
            return Err(Abandoned::Overflow);
        }
        if tx.send(Message::Chunk(chunk)).is_err() {
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
            Some(Message::Chunk(chunk)) => {
                self.buffered.fetch_sub(chunk.len(), Ordering::AcqRel);
                Some(Ok(chunk))
            }
            Some(Message::End) => {
                self.ended = true;
                None
            }
            None => {
                self.ended = true;
                // The sender marks an overflow by pushing the count far past any limit.
                let overflowed = self.buffered.load(Ordering::Acquire) >= usize::MAX / 2;
                Some(Err(if overflowed {
                    Abandoned::Overflow
                } else {
                    Abandoned::Cut
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_pass_in_order_without_copies() {
        let (mut tx, mut rx) = channel(100);
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
        let (mut tx, mut rx) = channel(10);
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
        let (mut tx, mut rx) = channel(10);
        tx.send(Bytes::from_static(b"1")).unwrap();
        drop(tx);
        assert_eq!(rx.next().await.unwrap().unwrap(), "1");
        assert_eq!(rx.next().await.unwrap(), Err(Abandoned::Cut));
    }

    #[tokio::test]
    async fn a_gone_mirror_closes_the_feed() {
        let (mut tx, rx) = channel(10);
        drop(rx);
        assert!(!tx.is_open());
        assert_eq!(
            tx.send(Bytes::from_static(b"1")),
            Err(Abandoned::MirrorGone)
        );
    }
}
