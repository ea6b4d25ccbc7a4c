//! One JSON line per request, written by a background thread so that a slow
//! terminal or pipe never stalls a request. When the queue is full the line is
//! dropped and counted in `trident_access_log_dropped_total`.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;

use crate::config::AccessLogTarget;

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// One access log record.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// Milliseconds since the Unix epoch at request start.
    pub ts_ms: u128,
    pub request_id: &'a str,
    pub client: Option<String>,
    pub protocol: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub model: Option<&'a str>,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    /// Set by the `api_key` filter, or a `jwt` filter with `tenant_claim`.
    pub tenant: Option<&'a str>,
    pub upstream: Option<String>,
    /// HTTP status, or the gRPC status name.
    pub status: String,
    pub duration_us: u128,
    pub error: Option<String>,
}

/// What the writer thread is sent.
enum Message {
    Line(String),
    /// Write everything queued before this, then answer.
    Flush(SyncSender<()>),
}

#[derive(Clone)]
pub struct AccessLog {
    sender: Option<SyncSender<Message>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread for `target` (none for [`AccessLogTarget::Off`]).
    pub fn start(target: AccessLogTarget, dropped: IntCounter) -> std::io::Result<Self> {
        let sender = match target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stdout | AccessLogTarget::Stderr => {
                let (sender, receiver) = mpsc::sync_channel(QUEUE);
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || match target {
                        AccessLogTarget::Stderr => write_lines(receiver, std::io::stderr().lock()),
                        _ => write_lines(receiver, std::io::stdout().lock()),
                    })?;
                Some(sender)
            }
        };
        Ok(AccessLog { sender, dropped })
    }

    /// Waits, at most `timeout`, until every line logged so far is written:
    /// before the process exits.
    pub fn flush(&self, timeout: Duration) {
        let Some(sender) = &self.sender else { return };
        let (done, written) = mpsc::sync_channel(1);
        if sender.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(timeout);
        }
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    pub fn log(&self, entry: &Entry<'_>) {
        let Some(sender) = &self.sender else { return };
        let line = match serde_json::to_string(entry) {
            Ok(line) => line,
            Err(e) => {
                log::error!("serializing access log entry: {e}");
                return;
            }
        };
        match sender.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// How long the writer sleeps once the queue is empty. It polls rather than
/// waits on the queue, so that logging a line never wakes it: a wake-up is a
/// system call on the request's thread and a context switch on the writer's,
/// per line (the log cost 21–24 µs of CPU per request that way, `cargo bench
/// --bench load -- --smoke`). Lines wait at most this long; the queue holds a
/// thousand times more than a busy proxy logs meanwhile.
const WRITER_POLL: Duration = Duration::from_millis(10);

/// Writes what is queued, flushing once per batch (one write per batch, not
/// per line), then sleeps [`WRITER_POLL`]; ends when every sender is gone.
fn write_lines(receiver: Receiver<Message>, mut out: impl Write) {
    let mut out_buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
    loop {
        let mut flushed = Vec::new();
        let open = loop {
            match receiver.try_recv() {
                Ok(Message::Line(line)) => {
                    if writeln!(out_buf, "{line}").is_err() {
                        return;
                    }
                }
                Ok(Message::Flush(done)) => flushed.push(done),
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        if out_buf.flush().is_err() {
            return;
        }
        for done in flushed {
            let _ = done.try_send(());
        }
        if !open {
            return;
        }
        std::thread::sleep(WRITER_POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_logged_is_written_by_the_next_flush() {
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let out = Captured::default();
        let writer = out.clone();
        let thread = std::thread::spawn(move || write_lines(receiver, writer));
        let log = AccessLog {
            sender: Some(sender),
            dropped: IntCounter::new("dropped", "dropped").unwrap(),
        };
        for round in 0..3 {
            for i in 0..5000 {
                if let Some(sender) = &log.sender {
                    sender
                        .try_send(Message::Line(format!("{round}-{i}")))
                        .unwrap();
                }
            }
            log.flush(Duration::from_secs(10));
            let lines = out
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            assert_eq!(lines, 5000 * (round + 1));
        }
        drop(log);
        thread.join().unwrap();
    }
}
