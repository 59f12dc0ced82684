//! One run of the window script: the arguments it takes in order (see
//! `window.lua`), the timeout, and what a reply or an error leaves behind.

use tokio::time::Instant;

use super::{lock, RedisStore, StoreError};

/// A reply of the window script, decoded once: `{code, value, counter,
/// n pairs of used and frees_us, pause_us}` (see `window.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub(super) code: Code,
    /// The decision counter this run saw (0 for ops that decide nothing).
    pub(super) seq: u64,
    /// Per window: sends counted, µs until the oldest leaves.
    pub(super) windows: Vec<(u32, u64)>,
    /// µs left of a pause ordered by an upstream 429.
    pub(super) pause_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    /// Done (a write, a peek, a check) or, for `reserve`, admitted.
    Done,
    /// No slot: one frees after this many µs.
    Wait(u64),
    /// Nobody is admitted for this many µs while replicas write back.
    Settling(u64),
    /// Redis holds another epoch than this replica knows (it lost sends,
    /// or found a loss): write back, then take this one.
    Lost { epoch: i64 },
}

impl Reply {
    /// Decodes a reply for `n` windows; anything else is an error, never a guess.
    pub(super) fn decode(v: &[i64], n: usize) -> Result<Self, StoreError> {
        let bad = || StoreError::Redis(format!("the window script answered {v:?}"));
        let (&code, &value, &seq) = match v {
            [c, val, s, ..] => (c, val, s),
            _ => return Err(bad()),
        };
        let seq = u64::try_from(seq).map_err(|_| bad())?;
        if code == -1 {
            return Ok(Reply {
                code: Code::Lost { epoch: value },
                seq,
                windows: Vec::new(),
                pause_us: 0,
            });
        }
        let rest = &v[3..];
        if rest.len() != 2 * n + 1 {
            return Err(bad());
        }
        let us = |x: i64| x.max(0) as u64;
        let code = match code {
            1 => Code::Done,
            0 => Code::Wait(us(value).max(1)),
            2 => Code::Settling(us(value).max(1)),
            _ => return Err(bad()),
        };
        Ok(Reply {
            code,
            seq,
            windows: rest[..2 * n]
                .chunks_exact(2)
                .map(|p| (u32::try_from(p[0].max(0)).unwrap_or(u32::MAX), us(p[1])))
                .collect(),
            pause_us: us(rest[2 * n]),
        })
    }
}

/// What one script run is asked.
#[derive(Clone)]
pub(super) struct Ask<'a> {
    pub(super) op: &'static str,
    pub(super) member: &'a str,
    pub(super) now_us: Option<u64>,
    pub(super) ahead: usize,
    pub(super) extra: Vec<String>,
}

impl<'a> Ask<'a> {
    pub(super) fn new(op: &'static str, member: &'a str, now_us: Option<u64>) -> Self {
        Self {
            op,
            member,
            now_us,
            ahead: 0,
            extra: Vec::new(),
        }
    }
}

impl RedisStore {
    /// A new epoch should this run find none: unique per replica (the random
    /// id prefix) and per run (the call counter), without a syscall per run.
    fn epoch_candidate(&self) -> i64 {
        let n = self.next_id();
        ((self.id_prefix ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 12).max(1) as i64
    }

    pub(super) async fn run(&self, ask: Ask<'_>) -> Result<Reply, StoreError> {
        let mut conn = self.link.connection().await?;
        let w = lock(&self.windows).clone();
        let epoch = lock(&self.epoch).clone();
        // A deciding op over a new connection (not the first): Redis may
        // have gone back in time without a trace in what it holds. Claiming
        // a counter no Redis can have reached makes the script start a new
        // epoch, so every replica writes back before anyone is admitted.
        let deciding = matches!(ask.op, "reserve" | "project" | "check");
        let reconnected = deciding && {
            let now = self.link.generation();
            let mut mine = lock(&self.generation);
            let new = *mine != 0 && *mine != now;
            *mine = now;
            new
        };
        let seen = if reconnected {
            i64::MAX as u64
        } else {
            *lock(&self.seen)
        };
        // Only a decision looks at it (landings, refunds and peeks return
        // before the check); judged on this replica's clock, not when a test
        // overrides Redis'.
        let newest = match ask.now_us {
            Some(_) => String::new(),
            None if !deciding => String::new(),
            None => self
                .newest_landed()
                .map(|id| self.member(id))
                .unwrap_or_default(),
        };
        let mut inv = self.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        inv.arg(ask.op)
            .arg(ask.member)
            .arg(self.flight.as_micros() as u64)
            .arg(ask.now_us.map(|n| n.to_string()).unwrap_or_default())
            .arg(epoch)
            .arg(self.epoch_candidate())
            .arg(self.settle.as_micros() as u64)
            .arg(ask.ahead)
            .arg(seen)
            .arg(newest)
            .arg(w.args.len());
        for (limit, span) in &w.args {
            inv.arg(*limit).arg(*span);
        }
        for x in &ask.extra {
            inv.arg(x);
        }
        let timeout = self.link.op_timeout;
        let result = tokio::time::timeout(timeout, async {
            inv.invoke_async::<Vec<i64>>(&mut conn).await
        })
        .await;
        match result {
            Ok(Ok(v)) => {
                let reply = Reply::decode(&v, w.args.len())?;
                let now = Instant::now();
                *lock(&self.heard) = Some(now);
                if !matches!(reply.code, Code::Lost { .. }) {
                    let mut seen = lock(&self.seen);
                    *seen = (*seen).max(reply.seq);
                    *lock(&self.last) = Some((now, reply.windows.clone()));
                    *lock(&self.paused) = (reply.pause_us > 0)
                        .then(|| now + std::time::Duration::from_micros(reply.pause_us));
                }
                Ok(reply)
            }
            Ok(Err(e)) => {
                // Dropped, reset, refused: every one is an I/O error.
                if e.is_io_error() {
                    self.link.reset().await;
                }
                Err(self.link.error(e))
            }
            Err(_) => {
                self.link.reset().await;
                Err(StoreError::Timeout(timeout))
            }
        }
    }
}

/// A random non-zero number Lua's doubles hold exactly (epochs, id prefixes).
pub(super) fn random() -> i64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 12).max(1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape `window.lua` answers, and shapes it never does.
    #[test]
    fn replies_decode_once_into_their_meaning() {
        let ok = |v: &[i64], n| Reply::decode(v, n).unwrap();
        assert_eq!(
            ok(&[1, 123, 7, 3, 500, 9, 0, 2000], 2),
            Reply {
                code: Code::Done,
                seq: 7,
                windows: vec![(3, 500), (9, 0)],
                pause_us: 2000
            }
        );
        // Three windows (a credential's own beside Dastra's two): each
        // pair read in its place, the pause after the last.
        assert_eq!(
            ok(&[1, 0, 7, 1, 10, 2, 20, 3, 30, 4000], 3),
            Reply {
                code: Code::Done,
                seq: 7,
                windows: vec![(1, 10), (2, 20), (3, 30)],
                pause_us: 4000
            }
        );
        assert_eq!(ok(&[0, 40, 8, 5, 40, 0], 1).code, Code::Wait(40));
        assert_eq!(
            ok(&[0, 0, 8, 5, 40, 0], 1).code,
            Code::Wait(1),
            "never zero"
        );
        assert_eq!(
            ok(&[2, 600_000, 9, 0, 0, 0], 1).code,
            Code::Settling(600_000)
        );
        assert_eq!(ok(&[-1, 42, 0], 3).code, Code::Lost { epoch: 42 });
        assert_eq!(ok(&[-1, 42, 17], 3).seq, 17);
        assert_eq!(ok(&[1, 1, 0, -3, -5, -1], 1).windows, vec![(0, 0)]);
        for bad in [
            &[][..],
            &[1, 2],
            &[1, 2, 3, 4],
            &[1, 2, 3, 4, 5, 6, 7],
            &[5, 0, 0, 0, 0, 0],
            &[1, 0, -1, 0, 0, 0],
        ] {
            assert!(Reply::decode(bad, 1).is_err(), "{bad:?}");
        }
    }
}
