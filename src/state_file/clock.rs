//! The state file's clocks. Within one boot, send times are read on
//! `CLOCK_BOOTTIME`, which every process of the boot shares and no
//! wall-clock step moves (suspend included, as Dastra's own clock goes on);
//! the boot is named by the kernel's `boot_id`. Only across a reboot does the
//! file fall back to the wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since boot, never 0 (0 marks an unanswered send).
pub(super) fn boot_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
        .max(1)
}

/// Nanoseconds since the Unix epoch on the wall clock.
pub(super) fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1))
        .max(1)
}

/// This boot's id; all zero when the kernel does not say (then every
/// restart is treated as a reboot: wall clock).
pub(super) fn boot_id() -> [u8; 16] {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|s| parse_uuid(s.trim()))
        .unwrap_or([0; 16])
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_is_named_and_its_clock_goes_forward() {
        assert_eq!(
            parse_uuid("0f2c3d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5"),
            Some([
                0x0f, 0x2c, 0x3d, 0x4e, 0x5a, 0x6b, 0x4c, 0x7d, 0x8e, 0x9f, 0xa0, 0xb1, 0xc2, 0xd3,
                0xe4, 0xf5
            ])
        );
        assert_eq!(parse_uuid("not a uuid"), None);
        // Linux names its boot; this is its name, not any constant.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert_eq!(hex::encode(boot_id()), kernel.trim().replace('-', ""));
        let a = boot_nanos();
        let b = boot_nanos();
        assert!(b >= a && a > 0);
    }
}
