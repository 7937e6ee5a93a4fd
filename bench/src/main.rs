//! `bv-bench`: Blockvirt measured side by side with its peers, in one run,
//! on the same data and the same disk.
//!
//! - `convert` (`convert.rs`): `qemu-img convert` of a raw image;
//! - `fio` (`fio_bench.rs`): fio's nbd engine, 4k random and 1M sequential
//!   reads and writes, against nbdkit, qemu-nbd and Blockvirt LVs of every
//!   layout, healthy and with a PV failed; and the disk alone under the
//!   same workloads (`disk.rs`), which sets each pattern's ceiling;
//! - `rebuild` (`rebuild.rs`): each redundant layout healthy, with a PV
//!   failed and while `lvconvert --repair` rebuilds it, and the rebuild's
//!   rate against the disk's sequential bandwidth.
//!
//! Every process a benchmark starts is killed, and every file it made
//! removed, when it ends: on success, on error and on Ctrl-C.

mod convert;
mod disk;
mod fio;
mod fio_bench;
mod options;
mod process;
mod rebuild;
mod report;
mod servers;
mod targets;

use std::process::ExitCode;

use options::Command;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{}", options::USAGE);
        return ExitCode::SUCCESS;
    }
    let command = match options::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("bv-bench: {e}\n{}", options::USAGE);
            return ExitCode::from(3);
        }
    };
    process::catch_interrupts();
    let result = match command {
        Command::Convert(options) => convert::run(&options),
        Command::Fio(options) => fio_bench::run(&options),
        Command::Rebuild(options) => rebuild::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bv-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
