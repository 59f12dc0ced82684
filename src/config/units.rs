//! Small value grammars of the config file: sizes (`"50MiB"`) and rates (`"20/s"`).

use std::time::Duration;

/// Parses `"50MiB"`, `"512KiB"`, `"1GB"` or a bare byte count `"1024"`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as \"50MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Parses `"20/s"`, `"600/m"`, `"5/10s"`: a count per humantime period.
pub(crate) fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not a rate such as \"20/s\""))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: `{n}` is not a whole number"))?;
    let per = per.trim();
    let period = match per {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => humantime::parse_duration(per).map_err(|e| format!("`{s}`: {e}"))?,
    };
    if n == 0 || period.is_zero() {
        return Err(format!("`{s}`: a rate needs a non-zero count and period"));
    }
    Ok((n, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50MiB").unwrap(), 50 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("2 KB").unwrap(), 2000);
        assert!(parse_size("50 furlongs").unwrap_err().contains("furlongs"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20/s").unwrap(), (20, Duration::from_secs(1)));
        assert_eq!(parse_rate("5/10s").unwrap(), (5, Duration::from_secs(10)));
        assert_eq!(parse_rate("600/m").unwrap(), (600, Duration::from_secs(60)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("20").is_err());
        assert!(parse_rate("x/s").is_err());
    }
}
