//! `lvcreate`'s layout options, LVM's way: `--type`, `-i` stripes,
//! `-I` stripe size, `-m` mirrors, plus `--ec K+M` for erasure coding.
//!
//! As in LVM, `-i N` alone means striped (raid0) and `-m N` alone means
//! raid1. RAID 0+1 (mirrored stripes) is not offered: raid10 (striped
//! mirrors) has the same capacity and speed and survives more failure
//! combinations, and rebuilding it copies one leg instead of a whole
//! stripe set; LVM has no raid01 type either.

use metadata::layout::{Layout, DEFAULT_UNIT_BYTES};

use crate::args::LvcreateArgs;
use crate::size::parse_size;

/// The layout the options ask for.
pub fn layout_from(args: &LvcreateArgs) -> Result<Layout, String> {
    let unit_bytes = match &args.stripe_size {
        // LVM's default unit for -I is KiB.
        Some(size) => parse_size(size, 1 << 10)?,
        None => DEFAULT_UNIT_BYTES,
    };
    let kind = match (args.kind.as_deref(), args.stripes, args.mirrors, &args.ec) {
        (Some(kind), ..) => kind,
        (None, None, None, None) => "linear",
        (None, Some(_), None, None) => "striped",
        (None, None, Some(_), None) => "raid1",
        (None, None, None, Some(_)) => "ec",
        _ => return Err("give --type when combining -i, -m and --ec".into()),
    };
    let unexpected = |option: &str| Err(format!("{option} does not apply to --type {kind}"));
    match kind {
        "linear" => {
            if args.stripes.is_some() || args.mirrors.is_some() || args.ec.is_some() {
                return unexpected("-i, -m or --ec");
            }
            Ok(Layout::Linear)
        }
        "striped" | "raid0" => {
            if args.mirrors.is_some() || args.ec.is_some() {
                return unexpected("-m or --ec");
            }
            let stripes = args.stripes.ok_or_else(|| format!("--type {kind} needs -i STRIPES"))?;
            Ok(Layout::Raid0 { stripes, unit_bytes })
        }
        "raid1" | "mirror" => {
            if args.stripes.is_some() || args.ec.is_some() {
                return unexpected("-i or --ec");
            }
            Ok(Layout::Raid1 {
                copies: args.mirrors.unwrap_or(1) + 1,
            })
        }
        "raid5" => {
            if args.mirrors.is_some() || args.ec.is_some() {
                return unexpected("-m or --ec");
            }
            Ok(Layout::Raid5 {
                stripes: args.stripes.unwrap_or(2),
                unit_bytes,
            })
        }
        "raid10" => {
            if args.ec.is_some() {
                return unexpected("--ec");
            }
            if args.mirrors.is_some_and(|m| m != 1) {
                return Err("raid10 keeps two copies: use -m 1 (or leave -m out)".into());
            }
            Ok(Layout::Raid10 {
                stripes: args.stripes.unwrap_or(2),
                copies: 2,
                unit_bytes,
            })
        }
        "ec" | "erasure" => {
            if args.stripes.is_some() || args.mirrors.is_some() {
                return unexpected("-i or -m");
            }
            let spec = args.ec.as_deref().ok_or("--type ec needs --ec K+M")?;
            let (data, parity) = spec
                .split_once('+')
                .and_then(|(k, m)| Some((k.trim().parse().ok()?, m.trim().parse().ok()?)))
                .ok_or_else(|| format!("--ec {spec}: give K+M, e.g. 4+2"))?;
            Ok(Layout::Erasure { data, parity, unit_bytes })
        }
        "raid01" | "raid0+1" => Err(
            "raid 0+1 is not offered: use --type raid10, which stripes over mirrors and survives more failures at the same capacity".into(),
        ),
        other => Err(format!(
            "unknown --type {other}; use linear, striped, raid0, raid1, raid5, raid10 or ec"
        )),
    }
}
