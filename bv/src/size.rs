//! Sizes as LVM users write and read them.
//!
//! Input: a number (decimals allowed) with an optional unit: `b` bytes,
//! `s` 512-byte sectors, `k m g t p e` powers of 1024, either case. With
//! no unit, the command's default applies (MiB for `-L`/`-V`, as in LVM).
//! A leading `+` means "grow by" (lvextend).
//!
//! Output follows `--units`: `h` (default) picks the largest unit that
//! keeps the number at 1 or more and prints two decimals, rounded to the
//! nearest, marking a figure shown larger than the real size with `<` as
//! LVM does; a fixed unit prints in that unit; `--nosuffix` drops the unit.

pub const MIB: u64 = 1 << 20;

const UNITS: [(char, u64); 8] = [
    ('b', 1),
    ('s', 512),
    ('k', 1 << 10),
    ('m', 1 << 20),
    ('g', 1 << 30),
    ('t', 1 << 40),
    ('p', 1 << 50),
    ('e', 1 << 60),
];

/// A size argument: absolute, or relative to the current size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeArg {
    Absolute(u64),
    Plus(u64),
}

fn unit_bytes(letter: char) -> Option<u64> {
    UNITS
        .iter()
        .find(|(l, _)| *l == letter.to_ascii_lowercase())
        .map(|(_, b)| *b)
}

/// Parses a size; `default_unit_bytes` applies when no unit is given.
pub fn parse_size(text: &str, default_unit_bytes: u64) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid size \"{text}\": use a number with an optional unit (b, s, k, m, g, t, p, e)"
        )
    };
    let text_trimmed = text.trim();
    let (number, unit) = match text_trimmed.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => (
            &text_trimmed[..text_trimmed.len() - 1],
            unit_bytes(c).ok_or_else(invalid)?,
        ),
        Some(_) => (text_trimmed, default_unit_bytes),
        None => return Err(invalid()),
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(invalid());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(invalid());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    let mut bytes = whole
        .checked_mul(unit)
        .ok_or_else(|| format!("size \"{text}\" is too large"))?;
    if !fraction.is_empty() {
        // Exact decimal fraction of the unit, rounded up to a whole byte.
        let digits = fraction.len().min(18) as u32;
        let numerator: u128 = fraction[..digits as usize].parse().map_err(|_| invalid())?;
        let denominator = 10u128.pow(digits);
        let part = (numerator * u128::from(unit)).div_ceil(denominator);
        bytes = bytes
            .checked_add(part as u64)
            .ok_or_else(|| format!("size \"{text}\" is too large"))?;
    }
    Ok(bytes)
}

/// Parses an lvextend-style size: `SIZE` or `+SIZE`.
pub fn parse_size_arg(text: &str, default_unit_bytes: u64) -> Result<SizeArg, String> {
    match text.strip_prefix('+') {
        Some(rest) => parse_size(rest, default_unit_bytes).map(SizeArg::Plus),
        None if text.starts_with('-') => Err(format!(
            "invalid size \"{text}\": shrinking is not supported"
        )),
        None => parse_size(text, default_unit_bytes).map(SizeArg::Absolute),
    }
}

/// How report commands print sizes (`--units`, `--nosuffix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Units {
    /// `None`: human-readable (`h`).
    pub unit: Option<char>,
    pub suffix: bool,
}

impl Default for Units {
    fn default() -> Self {
        Units {
            unit: None,
            suffix: true,
        }
    }
}

impl Units {
    pub fn parse(text: &str, suffix: bool) -> Result<Units, String> {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some('h' | 'H'), None) => Ok(Units { unit: None, suffix }),
            (Some(c), None) if unit_bytes(c).is_some() => Ok(Units {
                unit: Some(c.to_ascii_lowercase()),
                suffix,
            }),
            _ => Err(format!(
                "invalid units \"{text}\": use one of h, b, s, k, m, g, t, p, e"
            )),
        }
    }

    pub fn format(&self, bytes: u64) -> String {
        let (letter, unit) = match self.unit {
            Some(letter) => (letter, unit_bytes(letter).expect("validated")),
            None => {
                if bytes == 0 {
                    return if self.suffix { "0 ".into() } else { "0".into() };
                }
                *UNITS[2..]
                    .iter()
                    .rev()
                    .find(|(_, b)| bytes >= *b)
                    .unwrap_or(&UNITS[2])
            }
        };
        let text = if unit == 1 || unit == 512 {
            format!("{}", bytes / unit)
        } else {
            // Nearest hundredth; like LVM, a figure shown larger than the
            // real size gets a `<` ("<1.82t" is a bit under 1.82 TiB).
            let unit = u128::from(unit);
            let hundredths = (u128::from(bytes) * 100 + unit / 2) / unit;
            let value = format!("{}.{:02}", hundredths / 100, hundredths % 100);
            if hundredths * unit > u128::from(bytes) * 100 && self.unit.is_none() {
                format!("<{value}")
            } else {
                value
            }
        };
        if self.suffix {
            format!("{text}{letter}")
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_lvm_sizes() {
        assert_eq!(parse_size("100", MIB), Ok(100 * MIB));
        assert_eq!(parse_size("1G", MIB), Ok(1 << 30));
        assert_eq!(parse_size("1g", MIB), Ok(1 << 30));
        assert_eq!(parse_size("1.5g", MIB), Ok(3 << 29));
        assert_eq!(parse_size("2048s", MIB), Ok(MIB));
        assert_eq!(parse_size("4096b", MIB), Ok(4096));
        assert_eq!(parse_size("64k", MIB), Ok(64 << 10));
        assert_eq!(parse_size(".5m", MIB), Ok(MIB / 2));
        for bad in [
            "",
            "g",
            "1x",
            "-1g",
            "1.2.3g",
            "1 g",
            "abc",
            "99999999999999999999g",
        ] {
            assert!(parse_size(bad, MIB).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_size_arg("+1G", MIB), Ok(SizeArg::Plus(1 << 30)));
        assert_eq!(parse_size_arg("2G", MIB), Ok(SizeArg::Absolute(2 << 30)));
        assert!(parse_size_arg("-1G", MIB).is_err());
    }

    #[test]
    fn formats_like_lvm() {
        let h = Units::default();
        assert_eq!(h.format(10 << 30), "10.00g");
        assert_eq!(h.format(512 * MIB), "512.00m");
        assert_eq!(h.format(0), "0 ");
        assert_eq!(h.format((1 << 30) - 1), "<1024.00m");
        assert_eq!(h.format(1500 * MIB), "1.46g");
        assert_eq!(h.format((1 << 40) * 1819 / 1000), "<1.82t");
        assert_eq!(h.format(1536), "1.50k");
        let b = Units::parse("b", false).unwrap();
        assert_eq!(b.format(1 << 30), "1073741824");
        let g = Units::parse("g", true).unwrap();
        assert_eq!(g.format(3 << 29), "1.50g");
        assert!(Units::parse("x", true).is_err());
    }

    proptest! {
        #[test]
        fn whole_units_round_trip(n in 0u64..1_000_000, unit in 0usize..6) {
            let letter = ['b', 's', 'k', 'm', 'g', 't'][unit];
            let bytes = parse_size(&format!("{n}{letter}"), MIB).unwrap();
            prop_assert_eq!(bytes, n * unit_bytes(letter).unwrap());
            let printed = Units::parse("b", false).unwrap().format(bytes);
            prop_assert_eq!(parse_size(&printed, 1).unwrap(), bytes);
        }
    }
}
