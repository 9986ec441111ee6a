//! Measuring this process and this machine: memory, CPU time (by thread and by process), the
//! hypervisor's steal, the machine's stalls, percentiles.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

/// The machine's own stalls while a part runs: a thread that only sleeps 1 ms at a time and
/// records how late it wakes. Whatever delays it (the hypervisor, the scheduler, other threads)
/// delays the relay the same way, so it is the floor under the relay's tail latency.
pub struct Hiccups {
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub thread: std::thread::JoinHandle<Vec<u64>>,
}

impl Hiccups {
    pub fn start() -> Hiccups {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late_ns = vec![];
            while !flag.load(Ordering::Relaxed) {
                let before = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                late_ns.push(before.elapsed().as_nanos().saturating_sub(1_000_000) as u64);
            }
            late_ns
        });
        Hiccups { stop, thread }
    }

    /// p99 and p99.9 of the wake-up delays, in ms.
    pub fn stop(self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut late = self.thread.join().unwrap();
        late.sort_unstable();
        (percentile(&late, 0.99), percentile(&late, 0.999))
    }
}

/// Resident memory of this process, in KiB.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The machine's CPU counters (steal, total) from /proc/stat, to tell how much time the
/// hypervisor took from this VM during a part: tail latencies on a shared VM follow it.
pub fn cpu_counters() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

pub fn steal_since(before: (u64, u64)) -> f64 {
    let after = cpu_counters();
    100.0 * after.0.saturating_sub(before.0) as f64 / (after.1.saturating_sub(before.1)).max(1) as f64
}

/// CPU time the whole process has used (all threads, user + system), in seconds.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU time used so far by this process's threads, in seconds: (the relay's threads, all
/// others: load generator, listeners, the bench itself). From /proc/self/task/*/schedstat,
/// which counts nanoseconds on a CPU per thread. Exited threads are not counted, so take both
/// readings while the same threads live.
pub fn cpu_by_side() -> (f64, f64) {
    let (mut relay, mut other) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        if comm.trim_end() == "relay" {
            relay += ns;
        } else {
            other += ns;
        }
    }
    (relay as f64 / 1e9, other as f64 / 1e9)
}

/// CPU seconds process `pid` has used (user + system).
pub fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<f64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // `rest` starts at field 3 (state, not a number), so utime and stime are fields 10 and 11 here.
    (fields.get(10).copied().unwrap_or(0.0) + fields.get(11).copied().unwrap_or(0.0)) / ticks
}
