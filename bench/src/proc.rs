//! Child processes and what `/proc` says about them.
//!
//! Every child (the gateway, a floor server, a client worker) is started
//! with `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the bench whatever
//! way the bench ends (Ctrl-C, panic, `kill`), and is killed again by
//! [`Child`]'s `Drop` on an orderly exit. Pinning uses
//! `sched_setaffinity`, exactly what `taskset -c N` does.
//!
//! CPU time is read two ways: the total from the process's CPU clock
//! (`clock_gettime` on the clock id `clock_getcpuclockid` gives; nanosecond
//! resolution, dead threads included), and the user/system split from
//! `/proc/PID/stat` (clock ticks, usually 10 ms).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process with a line channel from its stdout and a pipe to its
/// stdin. Killed on drop.
pub struct Child {
    name: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

/// Restricts the calling thread (and what it forks later) to one core.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; the calls only read/write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Child {
    /// Starts `program args…`. Its stdout lines arrive through
    /// [`Child::recv_line`]; `stderr` goes where the caller says.
    pub fn spawn(
        name: &str,
        program: &str,
        args: &[String],
        pin: Option<usize>,
        stderr: Stdio,
    ) -> io::Result<Child> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(core) = pin {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(core, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {program}: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Child {
            name: name.to_string(),
            child,
            stdin,
            lines,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one command line to the child's stdin.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("stdin closed"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    /// The next stdout line, waiting until `deadline`. `None` on timeout
    /// or once the child closed its stdout.
    pub fn recv_line(&self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(wait).ok()
    }

    /// The next stdout line starting with `prefix` (others are skipped),
    /// with the prefix removed.
    pub fn expect_line(&self, prefix: &str, deadline: Instant) -> Option<String> {
        for _ in 0..10_000 {
            let line = self.recv_line(deadline)?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.trim().to_string());
            }
        }
        None
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        self.stdin = None; // EOF: workers and floors exit on it
        if !self.alive() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// CPU time used by a process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    /// From the process CPU clock, nanoseconds.
    pub total_ns: u64,
    /// `/proc/PID/stat` utime and stime, clock ticks.
    pub user_ticks: u64,
    pub sys_ticks: u64,
}

/// Clock ticks per second for `/proc/PID/stat`.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Reads a process's CPU time.
pub fn cpu(pid: u32) -> io::Result<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = &stat[stat
        .rfind(')')
        .ok_or_else(|| io::Error::other("bad stat"))?
        + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("bad stat field"))
    };
    // stat(5): utime is field 14 and stime 15; `rest` starts at field 3.
    let (user_ticks, sys_ticks) = (field(11)?, field(12)?);
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), as glibc's
    // clock_getcpuclockid builds it.
    let clock = ((!(pid as libc::clockid_t)) << 3) | 2;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    let total_ns = if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    } else {
        (user_ticks + sys_ticks) * 1_000_000_000 / ticks_per_second()
    };
    Ok(Cpu {
        total_ns,
        user_ticks,
        sys_ticks,
    })
}

/// The sum of several processes' CPU times; `None` if any is unknown.
pub fn cpu_sum(cpus: impl IntoIterator<Item = Option<Cpu>>) -> Option<Cpu> {
    let mut sum = Cpu::default();
    for c in cpus {
        let c = c?;
        sum.total_ns += c.total_ns;
        sum.user_ticks += c.user_ticks;
        sum.sys_ticks += c.sys_ticks;
    }
    Some(sum)
}

/// CPU used between two samples: total µs, and the user and system shares
/// of it (the tick counts split the precise total).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuDelta {
    pub total_us: f64,
    pub user_us: f64,
    pub sys_us: f64,
    /// Ticks seen in the window: below ~20 the split is rough.
    pub ticks: u64,
}

pub fn cpu_delta(before: Cpu, after: Cpu) -> CpuDelta {
    let total_us = after.total_ns.saturating_sub(before.total_ns) as f64 / 1000.0;
    let user = after.user_ticks.saturating_sub(before.user_ticks);
    let sys = after.sys_ticks.saturating_sub(before.sys_ticks);
    let ticks = user + sys;
    let user_share = if ticks > 0 {
        user as f64 / ticks as f64
    } else {
        0.5
    };
    CpuDelta {
        total_us,
        user_us: total_us * user_share,
        sys_us: total_us * (1.0 - user_share),
        ticks,
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        let pid = std::process::id();
        let before = cpu(pid).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = cpu(pid).unwrap();
        assert!(after.total_ns > before.total_ns);
        assert!(rss_kib(pid).unwrap() > 100);
        let d = cpu_delta(before, after);
        assert!((d.user_us + d.sys_us - d.total_us).abs() < 1e-6);
    }
}
