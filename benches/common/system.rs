//! What the harness reads off the machine: a process tree's CPU time (its
//! processes' CPU clocks) and resident memory (`/proc`), the free ports it hands
//! out, and the machine's description for the report.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::ClockId;
use nix::unistd::Pid;

pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// `pid` and its descendants (nginx's workers are children of its master).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            all_pids()
                .into_iter()
                .filter(|&p| parent_of(p) == Some(parent)),
        );
        i += 1;
    }
    tree
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split(' ').map(str::to_owned).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// User plus system CPU time used so far by `pids` (all their threads, those
/// that ended included), in nanoseconds: each process's CPU-time clock
/// (`clock_getcpuclockid`). `/proc/PID/stat` counts in 10 ms ticks, which at a
/// few thousand requests a second rounds a run's CPU per request to steps of
/// about 1 µs — as large as some of the costs the harness compares.
pub fn cpu_time(pids: &[u32]) -> Duration {
    pids.iter()
        .filter_map(|&pid| {
            let clock = ClockId::pid_cpu_clock_id(Pid::from_raw(pid as i32)).ok()?;
            // A process that has ended has no clock: it used nothing more.
            Some(Duration::from(clock.now().ok()?))
        })
        .sum()
}

/// Resident memory of `pids`, summed, in KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// "2 × Intel(R) Xeon(R) … , Linux 6.1.0" — what the figures came from.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: u64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib as f64 / (1 << 20) as f64)
        })
        .unwrap_or(0.0);
    format!(
        "{cpus} × {model}, {memory_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// The checked-out commit, marked `-dirty` with uncommitted changes.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{rev}-dirty"),
        _ => rev,
    }
}

/// Prints a run's report (`markdown`) and has `write` store it in `out`, given
/// the time now in Unix seconds; `stored` names what it wrote, for the note on stderr.
pub fn publish(
    markdown: &str,
    out: &std::path::Path,
    stored: &str,
    write: impl FnOnce(&std::path::Path, u64) -> std::io::Result<()>,
) {
    println!("{markdown}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    write(out, now).unwrap_or_else(|e| panic!("writing to {}: {e}", out.display()));
    eprintln!("{stored} in {}", out.display());
}
