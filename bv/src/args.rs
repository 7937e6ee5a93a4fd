//! The command line, in LVM's verbs and option spellings.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "bv",
    version,
    about = "Blockvirt: thin virtual disks on pooled disks, served over NBD",
    long_about = "Blockvirt pools disks into volume groups and serves logical volumes as \
                  virtual disks over NBD. `bv serve` runs the server; the other commands \
                  (LVM's verbs) manage it through its API socket."
)]
pub struct Cli {
    /// Directory of the server's metadata and API socket.
    #[arg(long, global = true, env = "BV_DATA_DIR", default_value = "bv-data")]
    pub data_dir: PathBuf,

    /// The management API socket (default: DATA_DIR/bv.sock).
    #[arg(long, global = true, env = "BV_SOCKET")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("bv.sock"))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: data path, metadata service, NBD exports, management API.
    Serve(ServeArgs),

    /// Initialize a file or block device as a physical volume.
    Pvcreate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Create the file (sparse) with this size when it does not exist.
        #[arg(long)]
        size: Option<String>,
        /// Overwrite a PV label left by another server.
        #[arg(short, long)]
        force: bool,
    },
    /// Report physical volumes.
    Pvs(ReportArgs),
    /// Display physical volumes in detail.
    Pvdisplay { paths: Vec<PathBuf> },
    /// Remove the PV label from devices outside any volume group.
    Pvremove {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(short, long)]
        force: bool,
    },
    /// Inject faults into live physical volumes (to test disk failures).
    Pvchange {
        /// none, fail, eio:RATE, slow:MILLISECONDS or corrupt:RATE.
        #[arg(long, required = true)]
        fault: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Move every extent off a physical volume, online.
    Pvmove {
        pv: PathBuf,
        #[command(flatten)]
        wait: WaitArgs,
    },

    /// Create a volume group from physical volumes.
    Vgcreate {
        vg: String,
        #[arg(required = true)]
        pvs: Vec<PathBuf>,
        /// Extent size (power of two, 256 KiB to 64 MiB; default 4 MiB).
        #[arg(short = 's', long = "physicalextentsize")]
        extent_size: Option<String>,
    },
    /// Add physical volumes to a volume group.
    Vgextend {
        vg: String,
        #[arg(required = true)]
        pvs: Vec<PathBuf>,
    },
    /// Remove unused physical volumes from a volume group.
    Vgreduce {
        vg: String,
        #[arg(required_unless_present = "removemissing")]
        pvs: Vec<PathBuf>,
        /// Remove the failed physical volumes instead (after lvconvert --repair).
        #[arg(long, conflicts_with = "pvs")]
        removemissing: bool,
    },
    /// Change volume group attributes.
    Vgchange {
        vg: String,
        /// What a PV failure starts: warn (report only) or allocate
        /// (rebuild onto other PVs at once), as LVM's raid_fault_policy.
        #[arg(
            long = "raid-fault-policy",
            alias = "raidfaultpolicy",
            value_parser = ["warn", "allocate"],
            required = true
        )]
        policy: String,
    },
    /// Report volume groups.
    Vgs(ReportArgs),
    /// Display volume groups in detail.
    Vgdisplay { vgs: Vec<String> },
    /// Remove volume groups (with -f, their logical volumes too).
    Vgremove {
        #[arg(required = true)]
        vgs: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },

    /// Create a logical volume: thick with -L, thin with -V.
    Lvcreate(LvcreateArgs),
    /// Report logical volumes.
    Lvs(ReportArgs),
    /// Display logical volumes in detail.
    Lvdisplay { lvs: Vec<String> },
    /// Grow a logical volume (also while in use).
    Lvextend {
        /// New size, or +SIZE to grow by (default unit MiB).
        #[arg(short = 'L', long = "size", allow_hyphen_values = true)]
        size: String,
        lv: String,
    },
    /// Repair a redundant logical volume: rebuild the legs lost with
    /// failed physical volumes onto the others, online.
    Lvconvert {
        #[arg(long, required = true)]
        repair: bool,
        lv: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change logical volumes: scrub a redundant one, or set how fast its
    /// repairs and scrubs may go.
    Lvchange {
        /// check counts bad copies (raid_mismatch_count); repair also
        /// rewrites them from the good ones.
        #[arg(long, value_parser = ["check", "repair"], required_unless_present = "maxrecoveryrate")]
        syncaction: Option<String>,
        /// Most a repair, pvmove or scrub of the LV copies or checks per
        /// second (default unit KiB; 0: unlimited), as LVM's.
        #[arg(long)]
        maxrecoveryrate: Option<String>,
        lv: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove logical volumes.
    Lvremove {
        #[arg(required = true)]
        lvs: Vec<String>,
        /// Accepted for LVM compatibility; bv never prompts.
        #[arg(short, long)]
        force: bool,
        /// Accepted for LVM compatibility; bv never prompts.
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct LvcreateArgs {
    /// Size of a thick LV: all extents allocated now (default unit MiB).
    #[arg(
        short = 'L',
        long = "size",
        conflicts_with = "virtual_size",
        required_unless_present = "virtual_size"
    )]
    pub size: Option<String>,
    /// Size of a thin LV: extents allocated on first write (default unit MiB).
    #[arg(short = 'V', long = "virtualsize")]
    pub virtual_size: Option<String>,
    #[arg(short = 'n', long = "name")]
    pub name: String,
    pub vg: String,
    /// Layout: linear (default), striped/raid0, raid1, raid5, raid10, ec.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Data stripes (raid0, raid5, raid10).
    #[arg(short = 'i', long = "stripes")]
    pub stripes: Option<usize>,
    /// Stripe size (default unit KiB; default 64 KiB).
    #[arg(short = 'I', long = "stripesize")]
    pub stripe_size: Option<String>,
    /// Extra copies (raid1: -m 1 keeps two copies).
    #[arg(short = 'm', long = "mirrors")]
    pub mirrors: Option<usize>,
    /// Erasure coding: K data + M parity shards, e.g. 4+2.
    #[arg(long = "ec")]
    pub ec: Option<String>,
    /// Most a repair, pvmove or scrub of the LV copies or checks per
    /// second (default unit KiB; 0: unlimited).
    #[arg(long)]
    pub maxrecoveryrate: Option<String>,
    /// y: mirror writes log their checksums ahead of the copies, so a
    /// power loss never lets a spoiled copy pass for an unfinished write
    /// (raid1, raid10).
    #[arg(long, value_parser = ["y", "n"])]
    pub raidintegrity: Option<String>,
    /// Accepted for LVM compatibility; bv never prompts.
    #[arg(short, long)]
    pub yes: bool,
}

/// Jobs that run in the background on the server (repair, scrub, pvmove).
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Return once the job started; `lvs` shows its progress.
    #[arg(short = 'b', long)]
    pub background: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output format.
    #[arg(long = "reportformat", value_enum, default_value = "basic")]
    pub format: ReportFormat,
    /// Units for sizes: h (human), b, s, k, m, g, t, p, e.
    #[arg(long, default_value = "h")]
    pub units: String,
    /// Print sizes without the unit letter.
    #[arg(long)]
    pub nosuffix: bool,
    /// Leave out the heading line.
    #[arg(long)]
    pub noheadings: bool,
    /// Fields to show (`-o +FIELD,...` adds to the default columns).
    #[arg(short = 'o', long = "options", allow_hyphen_values = true)]
    pub options: Option<String>,
    /// Restrict the report to these names (PV paths, VG names or VG/LV).
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Basic,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the NBD server (keep it on loopback unless the network
    /// is trusted: NBD has no authentication here).
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: SocketAddr,
    /// Also serve the management API over TCP (unauthenticated; loopback only).
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// Serve only GET /metrics over TCP, for Prometheus (unauthenticated):
    /// HOST:PORT, or PORT alone for 127.0.0.1:PORT.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<SocketAddr>,
    /// How PV I/O is submitted.
    #[arg(long, value_enum, default_value = "auto")]
    pub io_engine: IoEngine,
    /// Bypass the page cache on PVs (O_DIRECT) where the filesystem allows.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub direct_io: String,
    /// Seconds between background commits of thin-map changes.
    #[arg(long, default_value_t = 1.0)]
    pub commit_interval: f64,
    /// Seconds between health checks of idle PVs (0: none; I/O errors
    /// fail a PV at once either way).
    #[arg(long, default_value_t = 5.0)]
    pub pv_check_interval: f64,
}

/// `--metrics-listen`: a bare port stays on loopback.
fn parse_metrics_listen(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("expected HOST:PORT or PORT, got \"{value}\""))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoEngine {
    Auto,
    Uring,
    Threads,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_metrics_port_stays_on_loopback() {
        assert_eq!(
            parse_metrics_listen("9477"),
            Ok("127.0.0.1:9477".parse().unwrap())
        );
        assert_eq!(
            parse_metrics_listen("[::1]:9477"),
            Ok("[::1]:9477".parse().unwrap())
        );
        assert_eq!(
            parse_metrics_listen("0.0.0.0:9477"),
            Ok("0.0.0.0:9477".parse().unwrap())
        );
        assert!(parse_metrics_listen("localhost:9477").is_err());
        assert!(parse_metrics_listen("99999").is_err());
    }
}
