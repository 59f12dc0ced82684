//! The watchdog on the paused clock, and the connection caps.
use super::*;

#[tokio::test(start_paused = true)]
async fn no_request_within_the_header_timeout_closes() {
    let a = Activity::new();
    let r = watch(
        std::future::pending::<()>(),
        a.clone(),
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r, Err(Refused::HeaderTimeout));
    assert_eq!(a.base.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn idle_closes_only_with_nothing_in_flight_and_nothing_moving() {
    let a = Activity::new();
    let guard = a.request();
    let watched = {
        let a = a.clone();
        tokio::spawn(async move {
            watch(
                std::future::pending::<()>(),
                a,
                Duration::from_secs(10),
                Duration::from_secs(60),
            )
            .await
        })
    };
    // A call waiting minutes for quota keeps its connection.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!watched.is_finished());
    drop(guard);
    tokio::time::sleep(Duration::from_secs(59)).await;
    a.touch(); // bytes moved
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(!watched.is_finished(), "never early");
    // Closed within 1.25 idle_timeout of the last activity.
    tokio::time::sleep(Duration::from_secs(17)).await;
    assert_eq!(watched.await.unwrap(), Err(Refused::Idle));
}

#[test]
fn per_ip_and_total_caps_and_slots_come_back() {
    let m = Metrics::new();
    let l = ConnLimits::new(3, 2, m.clone());
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    let s1 = l.admit(a).unwrap();
    let _s2 = l.admit(a).unwrap();
    assert_eq!(l.admit(a).unwrap_err(), Refused::PerIp);
    let _s3 = l.admit(b).unwrap();
    assert_eq!(l.admit(b).unwrap_err(), Refused::MaxConnections);
    drop(s1);
    let _s4 = l
        .admit(a)
        .expect("a closed connection gives its place back");
    assert_eq!(m.connections_open.get(), 3);
    assert_eq!(
        m.connections_refused_total
            .with_label_values(&["per_ip"])
            .get(),
        1
    );
}
