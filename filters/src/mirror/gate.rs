//! The admission of mirror copies: at most `max_concurrent` in flight, at most
//! `queue` waiting for a slot, and the rest turned away at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One mirror's bounds, shared by every request it copies.
pub struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// A copy admitted by the gate: it holds a slot, or a place in the queue.
pub struct Ticket {
    gate: Arc<Gate>,
    slot: Option<OwnedSemaphorePermit>,
    /// Counted in the gate's queue until dropped.
    queued: bool,
}

/// A slot: the copy may be sent while this is held.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    pub fn new(max_concurrent: usize, queue: usize) -> Arc<Self> {
        Arc::new(Gate {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            waiting: AtomicUsize::new(0),
            queue,
        })
    }

    /// Admits a copy without waiting: a free slot, else a place in the queue,
    /// else `None` (the copy is dropped).
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(Ticket {
                gate: self.clone(),
                slot: Some(slot),
                queued: false,
            });
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue).then_some(n + 1)
            })
            .is_ok();
        queued.then(|| Ticket {
            gate: self.clone(),
            slot: None,
            queued: true,
        })
    }

    /// Copies in flight.
    #[cfg(test)]
    fn in_flight(&self, max_concurrent: usize) -> usize {
        max_concurrent.saturating_sub(self.slots.available_permits())
    }

    /// Copies waiting for a slot.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

impl Ticket {
    /// Waits for a slot (at once when the ticket already holds one); `None`
    /// only if the gate were closed, which it never is.
    pub async fn slot(mut self) -> Option<Slot> {
        let permit = match self.slot.take() {
            Some(permit) => permit,
            None => self.gate.slots.clone().acquire_owned().await.ok()?,
        };
        Some(Slot { _permit: permit })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A queued ticket leaves the queue when it gets its slot or is dropped waiting.
        if self.queued {
            self.gate.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_in_flight_and_queue() {
        let gate = Gate::new(2, 1);
        let a = gate.admit().unwrap().slot().await.unwrap();
        let b = gate.admit().unwrap().slot().await.unwrap();
        assert_eq!(gate.in_flight(2), 2);
        let queued = gate.admit().expect("one place in the queue");
        assert_eq!(gate.waiting(), 1);
        assert!(gate.admit().is_none(), "queue full");
        let waiter = tokio::spawn(queued.slot());
        tokio::task::yield_now().await;
        drop(a);
        let c = waiter.await.unwrap().unwrap();
        assert_eq!(gate.waiting(), 0);
        assert_eq!(gate.in_flight(2), 2);
        drop((b, c));
        assert_eq!(gate.in_flight(2), 0);
    }

    #[tokio::test]
    async fn a_dropped_queued_ticket_frees_its_place() {
        let gate = Gate::new(1, 1);
        let _held = gate.admit().unwrap().slot().await.unwrap();
        let queued = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        drop(queued);
        assert_eq!(gate.waiting(), 0);
        assert!(gate.admit().is_some());
    }
}
