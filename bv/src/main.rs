//! `bv`: the Blockvirt binary. `bv serve` runs the server; every other
//! command is an LVM-style client of its management API.

mod api;
mod args;
mod cli;
mod metrics;
mod serve;
mod size;

use clap::Parser;

use args::{Cli, Command};

/// Every I/O allocates buffers and futures; glibc's malloc spent about a
/// tenth of the server's CPU on them (see docs/ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// LVM's exit code for an invalid command line.
pub const EXIT_USAGE: i32 = 3;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let socket = cli.socket_path();
    let code = match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(serve::run(cli.data_dir, socket, args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("bv serve: {e:#}");
                    cli::EXIT_FAILED
                }
            }
        }
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(cli::run(command, &socket))
        }
    };
    std::process::exit(code);
}
