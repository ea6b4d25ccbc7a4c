//! Shared by the benches: running work on two threads at once.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Runs `work(thread, i)` for `i in 0..per_thread` on two threads started
/// together, and returns the slower thread's time: both contended for all of it.
pub fn on_two_threads(per_thread: u64, work: impl Fn(u64, u64) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u64)
            .map(|thread| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..per_thread {
                        work(thread, i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}
