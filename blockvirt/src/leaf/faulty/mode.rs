//! `FaultMode`: what a [`Faulty`](super::Faulty) wrapper injects, in the
//! spelling of `bv pvchange --fault MODE`.
//!
//! | spelling       | effect                                                      |
//! | -------------- | ----------------------------------------------------------- |
//! | `none`         | pass everything through                                     |
//! | `fail`         | every operation fails with EIO (a dead disk)                |
//! | `eio:RATE`     | each read, write, flush, discard, zeroes fails with P=RATE  |
//! | `slow:MS`      | every operation first sleeps MS milliseconds                |
//! | `corrupt:RATE` | each read returns flipped bits with P=RATE; data stays intact |
//!
//! RATE is in (0, 1]; MS is a whole number of milliseconds up to
//! [`SLOW_DELAY_MS_MAX`]. `Display` prints what `FromStr` reads, so a mode
//! survives the trip through the CLI, the management API and a report.

use std::fmt;
use std::str::FromStr;

/// The longest delay `slow:MS` accepts: a minute is already far past any
/// client's patience; longer would only look like a hang.
pub const SLOW_DELAY_MS_MAX: u64 = 60_000;

/// The fault a [`Faulty`](super::Faulty) wrapper injects.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FaultMode {
    #[default]
    None,
    Fail,
    Eio {
        rate: f64,
    },
    Slow {
        delay_ms: u64,
    },
    Corrupt {
        rate: f64,
    },
}

/// A mode that cannot be parsed or followed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fault mode '{input}': {reason}")]
pub struct FaultModeError {
    input: String,
    reason: &'static str,
}

const EXPECTED: &str = "expected none, fail, eio:RATE, slow:MS or corrupt:RATE";
const BAD_RATE: &str = "the rate must be a number in (0, 1], as in eio:0.1";
const BAD_DELAY: &str =
    "the delay must be a whole number of milliseconds up to 60000, as in slow:50";

impl FaultMode {
    /// The mode itself, or why no wrapper can follow it (a rate outside
    /// (0, 1], a delay over the maximum).
    pub fn validate(self) -> Result<FaultMode, FaultModeError> {
        let refuse = |reason| FaultModeError {
            input: self.to_string(),
            reason,
        };
        match self {
            FaultMode::Eio { rate } | FaultMode::Corrupt { rate } if !rate_is_valid(rate) => {
                Err(refuse(BAD_RATE))
            }
            FaultMode::Slow { delay_ms } if delay_ms > SLOW_DELAY_MS_MAX => Err(refuse(BAD_DELAY)),
            mode => Ok(mode),
        }
    }
}

fn rate_is_valid(rate: f64) -> bool {
    // NaN fails both comparisons.
    rate > 0.0 && rate <= 1.0
}

impl FromStr for FaultMode {
    type Err = FaultModeError;

    fn from_str(input: &str) -> Result<FaultMode, FaultModeError> {
        let refuse = |reason| FaultModeError {
            input: input.to_string(),
            reason,
        };
        let (name, arg) = match input.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (input, None),
        };
        let rate = |arg: &str| match arg.parse::<f64>() {
            Ok(rate) if rate_is_valid(rate) => Ok(rate),
            _ => Err(refuse(BAD_RATE)),
        };
        match (name, arg) {
            ("none", None) => Ok(FaultMode::None),
            ("fail", None) => Ok(FaultMode::Fail),
            ("none" | "fail", Some(_)) => Err(refuse("this mode takes no argument")),
            ("eio", Some(arg)) => Ok(FaultMode::Eio { rate: rate(arg)? }),
            ("corrupt", Some(arg)) => Ok(FaultMode::Corrupt { rate: rate(arg)? }),
            ("eio" | "corrupt", None) => Err(refuse(BAD_RATE)),
            ("slow", Some(arg)) => match arg.parse::<u64>() {
                Ok(delay_ms) if delay_ms <= SLOW_DELAY_MS_MAX => Ok(FaultMode::Slow { delay_ms }),
                _ => Err(refuse(BAD_DELAY)),
            },
            ("slow", None) => Err(refuse(BAD_DELAY)),
            _ => Err(refuse(EXPECTED)),
        }
    }
}

impl fmt::Display for FaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultMode::None => write!(f, "none"),
            FaultMode::Fail => write!(f, "fail"),
            FaultMode::Eio { rate } => write!(f, "eio:{rate}"),
            FaultMode::Slow { delay_ms } => write!(f, "slow:{delay_ms}"),
            FaultMode::Corrupt { rate } => write!(f, "corrupt:{rate}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_spellings_parse() {
        let cases = [
            ("none", FaultMode::None),
            ("fail", FaultMode::Fail),
            ("eio:0.1", FaultMode::Eio { rate: 0.1 }),
            ("eio:1", FaultMode::Eio { rate: 1.0 }),
            ("slow:50", FaultMode::Slow { delay_ms: 50 }),
            ("slow:0", FaultMode::Slow { delay_ms: 0 }),
            ("slow:60000", FaultMode::Slow { delay_ms: 60_000 }),
            ("corrupt:0.01", FaultMode::Corrupt { rate: 0.01 }),
        ];
        for (text, mode) in cases {
            assert_eq!(text.parse::<FaultMode>(), Ok(mode), "{text}");
        }
    }

    #[test]
    fn display_prints_what_parse_reads() {
        for text in [
            "none",
            "fail",
            "eio:0.1",
            "slow:50",
            "corrupt:0.01",
            "eio:1",
        ] {
            let mode: FaultMode = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
        let odd = FaultMode::Corrupt { rate: 1.0 / 3.0 };
        assert_eq!(odd.to_string().parse::<FaultMode>(), Ok(odd));
    }

    #[test]
    fn bad_spellings_get_a_clear_reason() {
        let cases = [
            ("", "expected none, fail"),
            ("EIO:0.1", "expected none, fail"),
            ("explode", "expected none, fail"),
            ("fail:1", "takes no argument"),
            ("eio", "rate must be"),
            ("eio:0", "rate must be"),
            ("eio:-0.5", "rate must be"),
            ("eio:1.01", "rate must be"),
            ("eio:NaN", "rate must be"),
            ("eio:inf", "rate must be"),
            ("corrupt:x", "rate must be"),
            ("slow", "delay must be"),
            ("slow:1.5", "delay must be"),
            ("slow:-1", "delay must be"),
            ("slow:60001", "delay must be"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<FaultMode>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
            assert!(err.contains(&format!("'{text}'")), "{text:?}: {err}");
        }
    }

    #[test]
    fn validate_refuses_what_parse_refuses() {
        assert!(FaultMode::Eio { rate: 0.0 }.validate().is_err());
        assert!(FaultMode::Corrupt { rate: f64::NAN }.validate().is_err());
        assert!(FaultMode::Slow { delay_ms: 60_001 }.validate().is_err());
        assert_eq!(FaultMode::Fail.validate(), Ok(FaultMode::Fail));
    }
}
