//! The passthrough key map on tokio's paused clock: a credential whose window
//! still holds sends is never forgotten to make room for another, so no
//! credential can be re-admitted a whole window by churning keys.

use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;
use crate::config::Upstream429;
use crate::credential::QuotaKey;
use crate::quota::test_limits as limits;

fn reject() -> AdmissionConfig {
    AdmissionConfig {
        on_limit: OnLimit::Reject,
        max_queue: 10,
        max_wait: Duration::from_secs(30),
        margin: Duration::ZERO,
        upstream_429: Upstream429::Pause,
        flight: Duration::from_secs(5),
    }
}

fn caller() -> Caller {
    Caller {
        name: "x".into(),
        weight: 1,
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_with_sends_in_its_window_is_never_forgotten_while_the_map_is_full() {
    let q = Quotas::new(
        &limits(&[(2, 1000), (3, 4000)]),
        &reject(),
        Some(KeyBounds {
            max_keys: 2,
            max_keys_per_ip: 2,
        }),
        None,
        None,
    )
    .unwrap();
    let t0 = Instant::now();
    let (a, b, c) = (QuotaKey([1; 32]), QuotaKey([2; 32]), QuotaKey([3; 32]));
    for key in [a, b] {
        let adm = q.get(key, None).unwrap();
        for _ in 0..2 {
            adm.acquire(&caller()).await.unwrap().sent().landed();
        }
    }
    advance(Duration::from_millis(100)).await;
    // A full map of busy keys: the newcomer waits until the first one is
    // empty in *every* window (the 4 s one), not only the shortest.
    match q.get(c, None) {
        Err(Refusal::TooManyKeys { retry_at }) => {
            assert_eq!(retry_at, t0 + Duration::from_millis(4000))
        }
        other => panic!("{other:?}"),
    }
    // Past the short window only: `a` still holds two sends in the long one.
    advance(Duration::from_millis(1000)).await;
    assert!(matches!(q.get(c, None), Err(Refusal::TooManyKeys { .. })));
    // And `a`, asked again, is the same admission with its sends counted.
    {
        let adm = q.get(a, None).unwrap();
        adm.acquire(&caller()).await.unwrap().sent().landed();
        assert!(matches!(
            adm.acquire(&caller()).await,
            Err(Refusal::QuotaExhausted { .. })
        ));
    }
    advance(Duration::from_millis(3000)).await;
    // `b` has emptied (`a` sent again at 1.1 s): the newcomer takes its place.
    assert!(q.get(c, None).is_ok());
    assert_eq!(q.all().len(), 2);
    assert!(
        q.get(a, None).unwrap().acquire(&caller()).await.is_ok(),
        "`a` kept, its 1.1 s send still counted below the 3 in 4 s"
    );
}
