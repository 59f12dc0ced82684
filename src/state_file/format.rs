//! The file's layout: a 64-byte header (magic, slot count, pid, checksum;
//! then the boot the times are on, the wall clock minus that boot's clock,
//! checksum), then fixed 40-byte records (key, seq, reserved, landed,
//! checksum). A 0.2 file has zeros where the boot goes: its times are wall
//! clock, as they were then.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use super::StateError;

pub(super) const MAGIC: &[u8; 8] = b"DPSTATE1";
pub(super) const HEADER: u64 = 64;
pub(super) const RECORD: u64 = 40;
/// `landed` of a reservation whose answer has not come (yet).
pub(super) const UNANSWERED: u64 = 0;
/// `landed` of a send given back (never reached Dastra): it does not count.
pub(super) const RELEASED: u64 = u64::MAX;
/// `reserved` of a pause record (a real send's is a time, never 0): its
/// `landed` is when the pause Dastra ordered ends. A 0.2 process reads it as
/// a send landing then, which only over-counts.
pub(super) const PAUSE: u64 = 0;

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
    pub(super) fn is_pause(&self) -> bool {
        self.reserved == PAUSE && self.landed != UNANSWERED && self.landed != RELEASED
    }

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

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Header {
    pub(super) slots: u64,
    /// The process that last opened the file.
    pub(super) pid: u64,
    /// The boot whose `CLOCK_BOOTTIME` the times are on; zero: wall clock.
    pub(super) boot: [u8; 16],
    /// Wall-clock nanoseconds minus boot-clock nanoseconds when written:
    /// turns the times into wall clock after a reboot.
    pub(super) offset: i64,
}

pub(super) fn header(h: &Header) -> [u8; HEADER as usize] {
    let mut b = [0u8; HEADER as usize];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&h.slots.to_le_bytes());
    b[16..24].copy_from_slice(&h.pid.to_le_bytes());
    let check = checksum(&b[..24]);
    b[24..32].copy_from_slice(&check.to_le_bytes());
    if h.boot != [0; 16] {
        b[32..48].copy_from_slice(&h.boot);
        b[48..56].copy_from_slice(&h.offset.to_le_bytes());
        let check = checksum(&b[32..56]);
        b[56..64].copy_from_slice(&check.to_le_bytes());
    }
    b
}

pub(super) fn read_pid(file: &mut File) -> u64 {
    let mut h = [0u8; 24];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
        Err(_) => 0,
    }
}

/// The header and every record in use; an empty file is a new one.
pub(super) fn parse(path: &Path, b: &[u8]) -> Result<(Header, Vec<Rec>), StateError> {
    let corrupt = |offset: u64, reason: String| StateError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    if b.is_empty() {
        return Ok((Header::default(), Vec::new()));
    }
    if b.len() < HEADER as usize || &b[..8] != MAGIC {
        return Err(corrupt(0, "not a dastra-proxy state file".into()));
    }
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if u(24) != checksum(&b[..24]) {
        return Err(corrupt(0, "header checksum mismatch".into()));
    }
    let (slots, pid) = (u(8), u(16));
    let mut boot = [0u8; 16];
    let mut offset = 0;
    if b[32..64].iter().any(|x| *x != 0) {
        if u(56) != checksum(&b[32..56]) {
            return Err(corrupt(32, "header checksum mismatch (boot clock)".into()));
        }
        boot.copy_from_slice(&b[32..48]);
        offset = u(48) as i64;
    }
    let expected = slots
        .checked_mul(RECORD)
        .and_then(|n| n.checked_add(HEADER))
        .filter(|n| slots > 0 && *n <= 1 << 32)
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
    Ok((
        Header {
            slots,
            pid,
            boot,
            offset,
        },
        out,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's bytes with a checksum that matches, whatever they say.
    fn sealed(fields: [u64; 4]) -> [u8; RECORD as usize] {
        let mut b = [0u8; RECORD as usize];
        for (i, v) in fields.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let check = checksum(&b[..32]);
        b[32..].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// The checksum is FNV-1a as the format says, not any function of the
    /// bytes: a file another release wrote must verify here.
    #[test]
    fn the_checksum_is_fnv_1a() {
        assert_eq!(checksum(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(checksum(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// A file cut inside its header is corrupt at offset 0, however much of
    /// the header is left — never read past its end; a whole header that
    /// gives the ring no slot is corrupt where it says so (offset 8).
    #[test]
    fn a_header_cut_short_or_with_no_slot_is_refused() {
        let p = Path::new("x.state");
        let whole = header(&Header {
            slots: 12,
            ..Header::default()
        });
        for n in [1, 8, 20, HEADER as usize - 1] {
            match parse(p, &whole[..n]) {
                Err(StateError::Corrupt { offset: 0, .. }) => {}
                other => panic!("{n} bytes: {other:?}"),
            }
        }
        let none = header(&Header::default());
        match parse(p, &none) {
            Err(StateError::Corrupt { offset: 8, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    /// The checksum says the bytes are whole; the fields must also make
    /// sense: a numbered record, landed no earlier than it was reserved
    /// unless it is unanswered or released.
    #[test]
    fn a_whole_record_that_makes_no_sense_is_refused() {
        assert!(Rec::decode(&sealed([5, 0, 10, 20])).is_err(), "seq 0");
        assert!(
            Rec::decode(&sealed([5, 3, 20, 10])).is_err(),
            "landed before reserved"
        );
        for landed in [UNANSWERED, RELEASED, 20, 30] {
            let r = Rec::decode(&sealed([5, 3, 20, landed])).unwrap();
            assert_eq!(r.landed, landed);
        }
        let pause = Rec::decode(&sealed([5, 3, PAUSE, 99])).unwrap();
        assert!(pause.is_pause());
    }
}
