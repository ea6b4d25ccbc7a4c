//! A proxy under test as a child process: started in its own temporary
//! directory (its config file, its logs), waited for until it answers, stopped on drop.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::system::process_tree;

pub struct ProxyProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Runs the command `command` builds for a fresh directory (see
    /// [`write_config`]), then waits until it answers Triton's readiness call
    /// on `http` and accepts on `grpc`. Its standard output goes to `stdout.log`
    /// in that directory: a real file, as in production, so that a proxy logging
    /// there pays for its writes (to /dev/null they would cost nothing).
    pub fn start(
        name: &str,
        command: impl FnOnce(&std::path::Path) -> Command,
        http: SocketAddr,
        grpc: SocketAddr,
    ) -> ProxyProcess {
        ProxyProcess::start_until(name, command, || {
            ready(http) && TcpStream::connect(grpc).is_ok()
        })
    }

    /// As [`ProxyProcess::start`], waiting until `ready` says so instead
    /// (a TLS listener answers no plaintext readiness call).
    pub fn start_until(
        name: &str,
        command: impl FnOnce(&std::path::Path) -> Command,
        ready: impl Fn() -> bool,
    ) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let stdout = File::create(dir.path().join("stdout.log")).expect("create stdout.log");
        let child = command(dir.path())
            .stdout(stdout)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut process = ProxyProcess { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("{name} exited before it was ready ({status}): see its messages above");
            }
            assert!(Instant::now() < deadline, "{name} did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }

    /// The process and its descendants (nginx: master and workers).
    pub fn pids(&self) -> Vec<u32> {
        process_tree(self.child.id())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers too.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` to `proxy.conf` in the proxy's directory `dir`; returns its path.
pub fn write_config(dir: &std::path::Path, config: &str) -> PathBuf {
    let path = dir.join("proxy.conf");
    std::fs::write(&path, config).expect("write the proxy's config");
    path
}

fn ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = "GET /v2/health/ready HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n";
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}
