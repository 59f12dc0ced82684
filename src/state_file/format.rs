//! The file's layout: a 64-byte header (magic, slot count, pid, checksum),
//! then fixed 40-byte records (key, seq, reserved, landed, checksum).

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::StateError;

pub(super) const MAGIC: &[u8; 8] = b"DPSTATE1";
pub(super) const HEADER: u64 = 64;
pub(super) const RECORD: u64 = 40;
/// `landed` of a reservation whose answer has not come (yet).
pub(super) const UNANSWERED: u64 = 0;
/// `landed` of a send given back (never reached Dastra): it does not count.
pub(super) const RELEASED: u64 = u64::MAX;

/// One send as the file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Rec {
    /// Which quota key (the first 8 bytes of its digest; 0 for a held credential).
    pub(super) key: u64,
    /// 1-based send number; 0 is an empty slot.
    pub(super) seq: u64,
    pub(super) reserved: u64,
    pub(super) landed: u64,
}

impl Rec {
    pub(super) fn encode(&self) -> [u8; RECORD as usize] {
        let mut b = [0u8; RECORD as usize];
        if self.seq == 0 {
            return b;
        }
        for (i, v) in [self.key, self.seq, self.reserved, self.landed]
            .iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let check = checksum(&b[..32]);
        b[32..].copy_from_slice(&check.to_le_bytes());
        b
    }

    pub(super) fn decode(b: &[u8]) -> Result<Self, String> {
        if b.iter().all(|&x| x == 0) {
            return Ok(Self::default());
        }
        let u = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        if u(4) != checksum(&b[..32]) {
            return Err("record checksum mismatch".into());
        }
        let r = Self {
            key: u(0),
            seq: u(1),
            reserved: u(2),
            landed: u(3),
        };
        if r.seq == 0 || (r.landed != UNANSWERED && r.landed != RELEASED && r.landed < r.reserved) {
            return Err("record fields are inconsistent".into());
        }
        Ok(r)
    }
}

/// FNV-1a, 64-bit: catches torn or foreign bytes, not an adversary.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(super) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1))
        .max(1)
}

pub(super) fn header(slots: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&slots.to_le_bytes());
    h[16..24].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    let check = checksum(&h[..24]);
    h[24..32].copy_from_slice(&check.to_le_bytes());
    h
}

pub(super) fn read_pid(file: &mut File) -> u64 {
    let mut h = [0u8; 24];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
        Err(_) => 0,
    }
}

/// The header's `(slots, pid)` and every record in use; an empty file is a new one.
pub(super) fn parse(path: &Path, b: &[u8]) -> Result<((u64, u64), Vec<Rec>), StateError> {
    let corrupt = |offset: u64, reason: String| StateError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    if b.is_empty() {
        return Ok(((0, 0), Vec::new()));
    }
    if b.len() < HEADER as usize || &b[..8] != MAGIC {
        return Err(corrupt(0, "not a dastra-proxy state file".into()));
    }
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if u(24) != checksum(&b[..24]) {
        return Err(corrupt(0, "header checksum mismatch".into()));
    }
    let (slots, pid) = (u(8), u(16));
    let expected = slots
        .checked_mul(RECORD)
        .and_then(|n| n.checked_add(HEADER))
        .filter(|n| *n <= 1 << 32)
        .ok_or_else(|| corrupt(8, format!("impossible slot count {slots}")))?;
    if b.len() as u64 != expected {
        return Err(corrupt(
            (b.len() as u64).min(expected),
            format!(
                "truncated or extended: {} bytes where {slots} slots take {expected}",
                b.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for i in 0..slots {
        let at = HEADER + i * RECORD;
        let r = Rec::decode(&b[at as usize..(at + RECORD) as usize]).map_err(|e| corrupt(at, e))?;
        if r.seq != 0 {
            out.push(r);
        }
    }
    Ok(((slots, pid), out))
}
