//! The machine under the benchmark: CPU pinning and what `/proc` says about a process.

use std::process::{Command, Stdio};

/// The CPU the proxy runs on when pinned.
pub const PROXY_CPU: u32 = 0;
/// The CPU the benchmark (load generator and upstream) runs on when pinned.
pub const BENCH_CPU: u32 = 1;
/// `CLK_TCK` when `getconf` cannot say (it is 100 on every Linux in practice).
const DEFAULT_CLOCK_TICKS: u64 = 100;

/// Whether the proxy and the benchmark each have a CPU of their own.
#[derive(Debug, Clone)]
pub enum Pinning {
    /// The benchmark is on [`BENCH_CPU`]; the proxy is started on [`PROXY_CPU`].
    Pinned,
    /// Both float over every CPU; the reason says why.
    Unpinned(String),
}

impl Pinning {
    /// Pins this process (every thread) to [`BENCH_CPU`] if `taskset` exists and
    /// CPUs 0 and 1 are online. Call before any other thread starts.
    pub fn pin_self() -> Self {
        if !runs(
            Command::new("taskset")
                .arg("--version")
                .stdout(Stdio::null()),
        ) {
            return Self::Unpinned("taskset not found".to_owned());
        }
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
        let cpus = parse_cpu_list(online.trim());
        if !(cpus.contains(&PROXY_CPU) && cpus.contains(&BENCH_CPU)) {
            return Self::Unpinned(format!(
                "CPUs {PROXY_CPU} and {BENCH_CPU} are not both online ({online:?})",
                online = online.trim()
            ));
        }
        let pid = std::process::id().to_string();
        let pinned = runs(
            Command::new("taskset")
                .args(["-a", "-c", "-p", &BENCH_CPU.to_string(), &pid])
                .stdout(Stdio::null()),
        );
        if pinned {
            Self::Pinned
        } else {
            Self::Unpinned("taskset could not pin this process".to_owned())
        }
    }

    /// How to start a command on the proxy's CPU: `taskset -c 0 PROGRAM` or `PROGRAM`.
    pub fn command(&self, program: &std::path::Path) -> Command {
        match self {
            Self::Pinned => {
                let mut command = Command::new("taskset");
                command.args(["-c", &PROXY_CPU.to_string()]).arg(program);
                command
            }
            Self::Unpinned(_) => Command::new(program),
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match self {
            Self::Pinned => format!(
                "proxy pinned to CPU {PROXY_CPU} (`--worker-threads 1`), load generator and upstream pinned to CPU {BENCH_CPU}"
            ),
            Self::Unpinned(why) => format!(
                "**unpinned** ({why}): proxy (`--worker-threads 1`), load generator and upstream share every CPU"
            ),
        }
    }
}

fn runs(command: &mut Command) -> bool {
    command
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `0-1,4` → `[0, 1, 4]`.
fn parse_cpu_list(list: &str) -> Vec<u32> {
    list.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((from, to)) => Some((from.parse().ok()?..=to.parse().ok()?).collect()),
            None => part.parse().ok().map(|cpu| vec![cpu]),
        })
        .flatten()
        .collect()
}

/// `CLK_TCK`: the unit of [`cpu_ticks`].
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_CLOCK_TICKS)
}

/// User plus system CPU time of `pid` (`"self"` for this process) so far, in ticks.
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name (field 2) is in parentheses and may hold spaces; fields after
    // it start with field 3 (state). utime and stime are fields 14 and 15.
    let (_, fields) = stat
        .rsplit_once(") ")
        .expect("/proc/PID/stat has `(comm) `");
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let ticks = |field: usize| -> u64 { fields[field - 3].parse().expect("a tick count") };
    ticks(14) + ticks(15)
}

/// CPU time every process used so far (all CPUs: user, nice, system, irq, softirq,
/// steal), in ticks; what is not ours is other load on the machine.
pub fn system_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let total = stat.lines().next().expect("the `cpu` line of /proc/stat");
    let ticks: Vec<u64> = total
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().expect("a tick count"))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum()
}

/// Resident set sizes of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// The peak so far (`VmHWM`).
    pub peak_kib: u64,
    /// Now (`VmRSS`).
    pub current_kib: u64,
}

/// The resident set sizes of `pid`.
pub fn memory(pid: &str) -> Memory {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/PID/status"))
    };
    Memory {
        peak_kib: field("VmHWM"),
        current_kib: field("VmRSS"),
    }
}
