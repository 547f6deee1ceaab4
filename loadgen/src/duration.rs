//! Human durations as operators write them: `500ms`, `30s`, `10m`, `1h30m`, `2d`.

use std::time::Duration;

/// A duration could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {why}; write a number and a unit, e.g. `500ms`, `30s`, `10m`, `1h30m`")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

/// Parses a sequence of `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(loadgen::parse_duration("1h30m")?, Duration::from_secs(5400));
/// assert_eq!(loadgen::parse_duration("250ms")?, Duration::from_millis(250));
/// assert!(loadgen::parse_duration("10").is_err());
/// # Ok::<(), loadgen::DurationError>(())
/// ```
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError { input: input.to_owned(), why };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| err("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            "" => return Err(err("a unit is missing")),
            _ => return Err(err("unknown unit (use ms, s, m, h or d)")),
        };
        rest = &rest[unit_len..];
        let part =
            u32::try_from(value).ok().and_then(|v| unit.checked_mul(v)).ok_or(err("it is too long"))?;
        total = total.checked_add(part).ok_or(err("it is too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("1s", 1_000),
            ("1m", 60_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1m30s", 90_000),
            ("0s", 0),
        ];
        for (input, ms) in ok {
            assert_eq!(parse(input).unwrap(), Duration::from_millis(ms), "{input}");
        }
        for bad in ["", "s", "10", "1x", "1.5s", "-1s", "99999999999h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("1x").unwrap_err().to_string().contains("unknown unit"));
    }
}
