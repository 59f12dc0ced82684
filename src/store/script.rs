//! One run of the window script: the arguments it takes in order (see
//! `window.lua`), the timeout, and what a reply or an error leaves behind.

use tokio::time::Instant;

use super::{lock, RedisStore, StoreError};

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

    pub(super) async fn run(&self, ask: Ask<'_>) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.link.connection().await?;
        let w = lock(&self.windows).clone();
        let epoch = lock(&self.epoch).clone();
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
            Ok(Ok(v)) if v.len() >= 2 => {
                let now = Instant::now();
                *lock(&self.heard) = Some(now);
                if v[0] != -1 {
                    *lock(&self.last) = Some((now, v[2..].to_vec()));
                }
                Ok(v)
            }
            Ok(Ok(_)) => Err(StoreError::Redis(
                "the window script answered too little".into(),
            )),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
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
