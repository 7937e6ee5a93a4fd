//! Child processes: run to completion under a time limit, stopped early on
//! Ctrl-C; and what a running server costs, read from `/proc`.
//!
//! SIGINT, SIGTERM and SIGHUP only set a flag. Every wait polls it and
//! returns an error, so the benchmark unwinds normally: servers are killed
//! and temporary directories removed as their handles drop.

use std::io::{Read, Seek};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The line of stderr that says what went wrong (the last non-empty one).
    pub fn reason(&self) -> String {
        let line = self.stderr.lines().rev().find(|l| !l.trim().is_empty());
        line.map_or_else(|| format!("exited with {}", self.status), str::to_string)
    }
}

/// Runs `command` to completion, killing it after `limit` or on an
/// interrupt. `tick` is called with the elapsed time about every 10 ms.
/// Output goes to unlinked temporary files, so a chatty child never blocks
/// on a full pipe and nothing is left behind.
pub fn run(
    command: &mut Command,
    limit: Duration,
    mut tick: impl FnMut(Duration),
) -> Result<Finished> {
    let description = format!("{command:?}");
    let (mut stdout, mut stderr) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {description}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let stop = check_interrupted().err().or_else(|| {
            (started.elapsed() > limit)
                .then(|| anyhow::anyhow!("{description} ran longer than {limit:?}"))
        });
        if let Some(error) = stop {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        tick(started.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |file: &mut std::fs::File| -> Result<String> {
        let mut text = String::new();
        file.rewind()?;
        file.read_to_string(&mut text)?;
        Ok(text)
    };
    Ok(Finished {
        status,
        stdout: read(&mut stdout)?,
        stderr: read(&mut stderr)?,
    })
}

/// Like `run`, but failing unless the command succeeds.
pub fn run_ok(command: &mut Command, limit: Duration) -> Result<Finished> {
    let finished = run(command, limit, |_| {})?;
    if !finished.status.success() {
        bail!("{command:?} failed: {}", finished.reason());
    }
    Ok(finished)
}

/// CPU time (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may itself hold spaces and ')'.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / per_second as f64)
}

/// Resets a process's peak RSS to its current RSS (`clear_refs` 5), so the
/// next `peak_rss_bytes` covers only what ran in between.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

/// A process's peak resident set size (VmHWM).
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib * 1024)
}
