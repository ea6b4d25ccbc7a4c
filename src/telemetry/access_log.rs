//! One JSON line per request, written by a background thread so that a slow
//! terminal, pipe or disk never stalls a request. When the queue is full the line is
//! dropped and counted in `trident_access_log_dropped_total`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;

use crate::config::{AccessLogSettings, AccessLogTarget};

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
    pub user_agent: Option<&'a str>,
    pub model: Option<&'a str>,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    /// Set by the `api_key` filter, or a `jwt` filter with `tenant_claim`.
    pub tenant: Option<&'a str>,
    /// The endpoint of the last try.
    pub upstream: Option<String>,
    /// The HTTP status sent to the client (200 for a gRPC call that got an
    /// answer, whatever its gRPC status); `None` when no response was sent.
    pub status: Option<u16>,
    /// A gRPC call's status code (0 OK, 14 UNAVAILABLE...); `None` for HTTP, or
    /// when the call ended without one.
    pub grpc_status: Option<u8>,
    /// Request body bytes read from the client; `None` for a request cut at shutdown.
    pub request_bytes: Option<usize>,
    /// Response body bytes sent to the client; `None` for a request cut at shutdown.
    pub response_bytes: Option<usize>,
    /// Upstream tries: 0 when Trident answered itself.
    pub tries: u32,
    /// Time spent in upstream tries, each from its start (connection included) to
    /// its end (the last response byte, or its failure), summed; `None` with no try.
    pub upstream_us: Option<u128>,
    pub duration_us: u128,
    /// The request's trace id (hex), when it is traced.
    pub trace_id: Option<String>,
    /// Why the request failed: the answer Trident sent itself (with the filter
    /// that refused it), or the proxying error.
    pub error: Option<String>,
}

/// Whether a request's line is written, by `server.access_log` sampling:
/// `failed` requests always are unless `sample_errors` is set.
pub fn sampled(settings: &AccessLogSettings, failed: bool) -> bool {
    (failed && !settings.sample_errors)
        || settings.sample_ratio >= 1.0
        || fastrand::f64() < settings.sample_ratio
}

/// What the writer thread is sent.
enum Message {
    Line(String),
    /// Write everything queued before this, then answer.
    Flush(SyncSender<()>),
    /// Look at the `reopen` flag now, not on the next line or [`QUIET_WAIT`].
    Wake,
}

#[derive(Clone)]
pub struct AccessLog {
    sender: Option<SyncSender<Message>>,
    dropped: IntCounter,
    /// Set to have the writer reopen its file before its next batch.
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Starts the writer thread for `target` (none for [`AccessLogTarget::Off`]);
    /// the error names the config key and, for a file, its path.
    pub fn start(target: &AccessLogTarget, dropped: IntCounter) -> Result<Self, String> {
        let reopen = Arc::new(AtomicBool::new(false));
        let output = match target {
            AccessLogTarget::Off => {
                return Ok(AccessLog {
                    sender: None,
                    dropped,
                    reopen,
                })
            }
            AccessLogTarget::Stdout => Output::Stdout,
            AccessLogTarget::Stderr => Output::Stderr,
            AccessLogTarget::File(path) => Output::File(Reopening {
                file: open(path).map_err(|e| {
                    format!("server.access_log: cannot open {}: {e}", path.display())
                })?,
                path: path.clone(),
            }),
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let reopen_asked = reopen.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || match output {
                Output::Stdout => {
                    write_lines(receiver, Std(std::io::stdout().lock()), &reopen_asked)
                }
                Output::Stderr => {
                    write_lines(receiver, Std(std::io::stderr().lock()), &reopen_asked)
                }
                Output::File(file) => write_lines(receiver, file, &reopen_asked),
            })
            .map_err(|e| format!("starting the access log writer: {e}"))?;
        Ok(AccessLog {
            sender: Some(sender),
            dropped,
            reopen,
        })
    }

    /// Has a file output opened again at its path (SIGUSR1, after logrotate
    /// renamed it): lines queued before go on to the old file or the new one,
    /// none is lost.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
        // A full queue has a busy writer, which sees the flag within a poll.
        if let Some(sender) = &self.sender {
            let _ = sender.try_send(Message::Wake);
        }
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

/// How long the writer sleeps after a pass that wrote lines. While lines come
/// it polls rather than waits on the queue, so that logging a line never wakes
/// it: a wake-up is a system call on the request's thread and a context switch
/// on the writer's, per line (the log cost 21–24 µs of CPU per request that
/// way, `cargo bench --bench load -- --smoke`). Lines wait at most this long;
/// the queue holds a thousand times more than a busy proxy logs meanwhile.
const WRITER_POLL: Duration = Duration::from_millis(10);

/// How long the writer waits on a queue that a pass found empty. The next line
/// (or a flush, or a reopen) wakes it at once, so an idle proxy's writer sleeps
/// instead of polling 100 times a second; this only bounds the wait.
const QUIET_WAIT: Duration = Duration::from_secs(5);

/// Where the writer thread writes.
enum Output {
    Stdout,
    Stderr,
    File(Reopening),
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}

/// An output the writer can be asked to reopen.
trait Sink: Write {
    fn reopen(&mut self);
}

/// Standard output or error: nothing to reopen.
struct Std<W>(W);

impl<W: Write> Write for Std<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Sink for Std<W> {
    fn reopen(&mut self) {}
}

/// A file, opened again at its path on request.
struct Reopening {
    path: PathBuf,
    file: File,
}

impl Write for Reopening {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.file.write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Sink for Reopening {
    /// A file that cannot be opened keeps the old one: lines still land somewhere.
    fn reopen(&mut self) {
        match open(&self.path) {
            Ok(file) => {
                self.file = file;
                log::info!("access log: {} reopened", self.path.display());
            }
            Err(e) => log::error!(
                "access log: cannot reopen {} ({e}); writing on to the file already open",
                self.path.display()
            ),
        }
    }
}

/// Writes what is queued, flushing once per batch (one write per batch, not
/// per line), reopens the output if `reopen` was set; then sleeps
/// [`WRITER_POLL`] if it wrote lines, else waits on the queue for the next
/// message (at most [`QUIET_WAIT`]). Ends when every sender is gone.
fn write_lines(receiver: Receiver<Message>, mut out: impl Sink, reopen: &AtomicBool) {
    let mut out_buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
    // The message a wait ended with: the next pass starts with it.
    let mut waited = None;
    loop {
        let mut flushed = Vec::new();
        let mut wrote = false;
        let open = loop {
            let message = match waited.take().map_or_else(|| receiver.try_recv(), Ok) {
                Ok(message) => message,
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            };
            match message {
                Message::Line(line) => {
                    wrote = true;
                    if writeln!(out_buf, "{line}").is_err() {
                        return;
                    }
                }
                Message::Flush(done) => flushed.push(done),
                Message::Wake => {}
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
        if reopen.swap(false, Ordering::Relaxed) {
            out_buf.get_mut().reopen();
        }
        if wrote {
            std::thread::sleep(WRITER_POLL);
            continue;
        }
        match receiver.recv_timeout(QUIET_WAIT) {
            Ok(message) => waited = Some(message),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer the test reads back, counting its reopens.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Captured {
        fn reopen(&mut self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `done` comes true within 1 s (the writer's quiet wait is 5 s).
    fn soon(done: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        done()
    }

    #[test]
    fn a_quiet_writer_wakes_for_a_line_and_for_a_reopen() {
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let out = Captured::default();
        let writer = out.clone();
        let reopen = Arc::new(AtomicBool::new(false));
        let asked = reopen.clone();
        let thread = std::thread::spawn(move || write_lines(receiver, writer, &asked));
        let log = AccessLog {
            sender: Some(sender),
            dropped: IntCounter::new("dropped", "dropped").unwrap(),
            reopen,
        };
        // Past a pass that found the queue empty: the writer waits on it.
        std::thread::sleep(WRITER_POLL * 5);
        log.reopen();
        assert!(soon(|| out.1.load(Ordering::Relaxed) == 1), "reopened");
        std::thread::sleep(WRITER_POLL * 5);
        if let Some(sender) = &log.sender {
            sender.try_send(Message::Line("quiet".into())).unwrap();
        }
        assert!(soon(|| out.0.lock().unwrap().as_slice() == b"quiet\n"));
        drop(log);
        thread.join().unwrap();
    }

    #[test]
    fn every_line_logged_is_written_by_the_next_flush() {
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let out = Captured::default();
        let writer = out.clone();
        let thread =
            std::thread::spawn(move || write_lines(receiver, writer, &AtomicBool::new(false)));
        let log = AccessLog {
            sender: Some(sender),
            dropped: IntCounter::new("dropped", "dropped").unwrap(),
            reopen: Arc::default(),
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

    #[test]
    fn sampling_keeps_failures_unless_told_to_sample_them_too() {
        let settings = |sample_ratio, sample_errors| AccessLogSettings {
            target: AccessLogTarget::Stdout,
            sample_ratio,
            sample_errors,
        };
        for _ in 0..100 {
            assert!(sampled(&settings(1.0, true), false));
            assert!(!sampled(&settings(0.0, false), false));
            assert!(sampled(&settings(0.0, false), true));
            assert!(!sampled(&settings(0.0, true), true));
        }
        let half = (0..10_000)
            .filter(|_| sampled(&settings(0.5, false), false))
            .count();
        assert!((4_000..6_000).contains(&half), "{half}");
    }

    #[test]
    fn a_file_that_cannot_be_reopened_keeps_the_one_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("access.log");
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        let mut out = Reopening {
            file: open(&path).unwrap(),
            path: path.clone(),
        };
        let kept = dir.path().join("access.log.1");
        std::fs::rename(&path, &kept).unwrap();
        std::fs::remove_dir(path.parent().unwrap()).unwrap();
        out.reopen();
        writeln!(out, "still written").unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "still written\n");
    }
}
