//! The standard `process_*` series (as Prometheus' own clients export them: CPU, memory, file
//! descriptors, threads, start time), read from /proc at each scrape. Elsewhere than Linux
//! there are none.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux's USER_HZ, the unit of /proc's CPU times (100 on every Linux architecture).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What /proc says about this process now; `None` where it could not be read.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub threads: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// Parse /proc/self/stat, /proc/self/status, /proc/stat (btime) and /proc/self/limits.
pub(crate) fn parse(stat: &str, status: &str, system_stat: &str, limits: &str) -> Sample {
    // Fields after the command name (in parentheses, which may hold spaces): state is 3rd.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(u), Some(s)) => Some((u + s) / TICKS_PER_SECOND),
        _ => None,
    };
    let boot = system_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let start_time_seconds = match (boot, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot + ticks / TICKS_PER_SECOND),
        _ => None,
    };
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok());
    Sample {
        cpu_seconds,
        start_time_seconds,
        resident_bytes: kib("VmRSS:").map(|k| k * 1024.0),
        virtual_bytes: kib("VmSize:").map(|k| k * 1024.0),
        threads: kib("Threads:"),
        open_fds: None,
        max_fds,
    }
}

fn sample() -> Sample {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut s = parse(
        &read("/proc/self/stat"),
        &read("/proc/self/status"),
        &read("/proc/stat"),
        &read("/proc/self/limits"),
    );
    s.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    s
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = sample();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            ("process_threads", "Number of OS threads in the process", s.threads),
            ("process_open_fds", "Number of open file descriptors", s.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", s.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_prometheus_clients_read_them() {
        // A command name with spaces and a parenthesis, as /proc shows it.
        let stat = "4242 (log socket) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 1000000 200 18446744073709551615";
        let status = "Name:\tlog-socket\nVmSize:\t  200000 kB\nVmRSS:\t   51200 kB\nThreads:\t7\n";
        let system = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        let s = parse(stat, status, system, limits);
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.start_time_seconds, Some(1_700_000_000.0 + 123.45));
        assert_eq!(s.resident_bytes, Some(51200.0 * 1024.0));
        assert_eq!(s.virtual_bytes, Some(200000.0 * 1024.0));
        assert_eq!(s.threads, Some(7.0));
        assert_eq!(s.max_fds, Some(1048576.0));
    }

    #[test]
    fn unreadable_proc_files_give_no_series_rather_than_wrong_ones() {
        assert_eq!(parse("", "", "", ""), Sample::default());
    }
}
