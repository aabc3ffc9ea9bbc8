//! `process_*` metrics of this process, read from `/proc/self` at each scrape (the names and
//! meanings Prometheus' client libraries use): CPU seconds, resident memory, open and
//! allowed file descriptors, start time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` when scraped.
#[derive(Debug)]
pub struct ProcessCollector {
    /// Seconds since the epoch at which the system booted (`btime` in `/proc/stat`).
    boot_time: f64,
}

/// Clock ticks per second in `/proc` (Linux's `USER_HZ`: 100 on every architecture it runs
/// brandgate on).
const TICKS: f64 = 100.0;

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        ProcessCollector { boot_time }
    }

    /// (CPU seconds, start time in seconds since the epoch) from `/proc/self/stat`.
    fn stat(&self) -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name is in parentheses and may hold spaces: count fields after it.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14, 15 (utime, stime) and 22 (starttime), counted from 1 with pid and comm.
        let number = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
        let cpu = (number(14)? + number(15)?) / TICKS;
        let start = self.boot_time + number(22)? / TICKS;
        Some((cpu, start))
    }

    fn resident_bytes(&self) -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        let kib = kib
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .ok()?;
        Some(kib * 1024.0)
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse::<f64>().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((cpu, start)) = self.stat() {
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(e)?;
            let e = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the epoch, in seconds",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(start).encode(e)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                self.resident_bytes(),
            ),
            ("process_open_fds", "Open file descriptors", open_fds()),
            (
                "process_max_fds",
                "Most open file descriptors allowed",
                max_fds(),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(e)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_from_proc() {
        let c = ProcessCollector::new();
        let (cpu, start) = c.stat().unwrap();
        assert!(cpu >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start > now - 86_400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        assert!(c.resident_bytes().unwrap() > 1_000_000.0);
        let before = open_fds().unwrap();
        let _file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(open_fds().unwrap() > before);
        assert!(max_fds().unwrap() >= 1024.0);
    }
}
