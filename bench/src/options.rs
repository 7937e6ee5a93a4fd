//! The command line: `bv-bench convert|fio|rebuild [OPTIONS]`.

use std::path::PathBuf;

pub const USAGE: &str = "\
usage: bv-bench convert [--size-mib N] [--rounds N] [--json FILE]
       bv-bench fio [--size-mib N] [--rounds N] [--runtime SECONDS] [--ramp SECONDS]
                    [--layouts linear,raid1,raid1-integrity,raid10,raid5,ec] [--json FILE]
       bv-bench rebuild [--size-mib N] [--runtime SECONDS]
                        [--layouts raid1,raid1-integrity,raid10,raid5,ec]
                        [--json FILE]";

pub enum Command {
    Convert(ConvertOptions),
    Fio(FioOptions),
    Rebuild(RebuildOptions),
}

pub struct ConvertOptions {
    /// Size of the image converted into each target.
    pub size_mib: u64,
    pub rounds: usize,
    pub json: Option<PathBuf>,
}

pub struct FioOptions {
    /// Size of every export (and so of the range fio touches).
    pub size_mib: u64,
    pub rounds: usize,
    /// Measured seconds of each fio run, after the ramp.
    pub runtime_s: u64,
    /// Seconds of each fio run that are not measured.
    pub ramp_s: u64,
    /// Blockvirt layouts to measure (names as in `targets::LAYOUTS`).
    pub layouts: Vec<String>,
    pub json: Option<PathBuf>,
}

pub struct RebuildOptions {
    /// Size of each thick LV (the rebuild copies its failed PV's share).
    pub size_mib: u64,
    /// Seconds fio runs once the repair starts.
    pub runtime_s: u64,
    /// Redundant layouts to measure (names as in `targets::LAYOUTS`).
    pub layouts: Vec<String>,
    /// Each LV's `--maxrecoveryrate` (as lvcreate takes it); none: unlimited.
    pub max_recovery_rate: Option<String>,
    pub json: Option<PathBuf>,
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let command = args.next().unwrap_or_else(|| "convert".into());
    let rebuild = command == "rebuild";
    let (mut size_mib, mut rounds, mut json) = (if rebuild { 4096 } else { 1024 }, 3, None);
    let (mut runtime_s, mut ramp_s) = (if rebuild { 20 } else { 10 }, 2);
    let mut max_recovery_rate = None;
    let mut layouts: Vec<String> = crate::targets::LAYOUTS
        .iter()
        .filter(|l| !rebuild || l.legs > 1)
        .map(|l| l.name.to_string())
        .collect();
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|e| format!("{what}: {e}: {value}"))
        };
        match (command.as_str(), arg.as_str()) {
            (_, "--size-mib") => size_mib = number("--size-mib")?,
            ("convert" | "fio", "--rounds") => rounds = number("--rounds")? as usize,
            (_, "--json") => json = Some(PathBuf::from(&value)),
            ("fio" | "rebuild", "--runtime") => runtime_s = number("--runtime")?,
            ("fio", "--ramp") => ramp_s = number("--ramp")?,
            ("rebuild", "--max-recovery-rate") => max_recovery_rate = Some(value),
            ("fio" | "rebuild", "--layouts") => {
                layouts = value.split(',').map(str::to_string).collect()
            }
            _ => return Err(format!("unknown option {arg} for {command}")),
        }
    }
    if size_mib == 0 || rounds == 0 {
        return Err("--size-mib and --rounds must be at least 1".into());
    }
    if runtime_s == 0 {
        return Err("--runtime must be at least 1 second".into());
    }
    if let Some(unknown) = layouts
        .iter()
        .find(|name| crate::targets::layout(name).is_none_or(|l| rebuild && l.legs == 1))
    {
        return Err(format!("unknown or non-redundant layout {unknown}"));
    }
    match command.as_str() {
        "convert" => Ok(Command::Convert(ConvertOptions {
            size_mib,
            rounds,
            json,
        })),
        "rebuild" => Ok(Command::Rebuild(RebuildOptions {
            size_mib,
            runtime_s,
            layouts,
            max_recovery_rate,
            json,
        })),
        "fio" => Ok(Command::Fio(FioOptions {
            size_mib,
            rounds,
            runtime_s,
            ramp_s,
            layouts,
            json,
        })),
        other => Err(format!(
            "unknown benchmark {other}; available: convert, fio, rebuild"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(line: &str) -> Result<Command, String> {
        parse(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn fio_options_and_defaults() {
        let Ok(Command::Fio(o)) = parse_words("fio --runtime 3 --layouts linear,ec") else {
            panic!("fio options refused");
        };
        assert_eq!(
            (o.size_mib, o.rounds, o.runtime_s, o.ramp_s),
            (1024, 3, 3, 2)
        );
        assert_eq!(o.layouts, ["linear", "ec"]);
    }

    #[test]
    fn refusals() {
        assert!(parse_words("fio --layouts raid6").is_err());
        assert!(parse_words("convert --runtime 3").is_err());
        assert!(parse_words("fio --rounds 0").is_err());
        assert!(parse_words("fio --size-mib").is_err());
        assert!(parse_words("dd").is_err());
        assert!(parse_words("rebuild --layouts linear").is_err());
        assert!(parse_words("rebuild --rounds 2").is_err());
    }

    #[test]
    fn rebuild_defaults_to_every_redundant_layout() {
        let Ok(Command::Rebuild(o)) = parse_words("rebuild") else {
            panic!("rebuild refused");
        };
        assert_eq!((o.size_mib, o.runtime_s), (4096, 20));
        assert_eq!(
            o.layouts,
            ["raid1", "raid1-integrity", "raid10", "raid5", "ec"]
        );
        assert_eq!(o.max_recovery_rate, None);
        let Ok(Command::Rebuild(o)) = parse_words("rebuild --max-recovery-rate 100m") else {
            panic!("rebuild --max-recovery-rate refused");
        };
        assert_eq!(o.max_recovery_rate.as_deref(), Some("100m"));
        assert!(parse_words("fio --max-recovery-rate 100m").is_err());
    }
}
