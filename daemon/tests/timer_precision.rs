//! The data-plane loop sleeps to the nanosecond: a timer fires within the timer slack of its
//! deadline, not up to a millisecond late as with `epoll_wait`'s whole milliseconds. The figures
//! (p50/p99/max against the old wait) come from `cargo bench -p tandem --bench timer_lateness`.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tandem::dataplane::sys::{EMPTY_EVENT, Epoll};
use tandem::dataplane::worker::sleep_budget;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

#[test]
fn the_sleep_budget_is_the_time_to_the_deadline_unrounded_and_capped() {
    let now = Instant::now();
    assert_eq!(sleep_budget(Some(now + us(1_500)), None, now), us(1_500));
    assert_eq!(sleep_budget(Some(now + us(5_050)), None, now), us(5_050));
    assert_eq!(sleep_budget(Some(now - us(10)), None, now), Duration::ZERO);
    // No timer: one second at most; a watchdog period caps it further.
    assert_eq!(sleep_budget(None, None, now), Duration::from_secs(1));
    assert_eq!(
        sleep_budget(Some(now + us(9_000)), Some(us(4_000)), now),
        us(4_000)
    );
}

/// Deadlines 100 µs past a whole millisecond are the worst case of a millisecond wait (rounded
/// up, it wakes ~900 µs late every time); the nanosecond wait wakes within the timer slack
/// (50 µs) plus scheduling. The median is asserted, so a busy machine's outliers do not fail it.
#[test]
fn the_loop_wakes_well_within_a_millisecond_of_a_deadline() {
    let epoll = Epoll::new().unwrap();
    let mut events = [EMPTY_EVENT; 4];
    let mut late = Vec::new();
    for k in 0..40u64 {
        let deadline = Instant::now() + us(1_000 * (1 + k % 5) + 100);
        loop {
            let now = Instant::now();
            if now >= deadline {
                late.push(now - deadline);
                break;
            }
            epoll
                .wait_timeout(&mut events, sleep_budget(Some(deadline), None, now))
                .unwrap();
        }
    }
    if !epoll.precise() {
        eprintln!("epoll_pwait2 unavailable (Linux < 5.11): millisecond fallback, not asserted");
        return;
    }
    late.sort();
    let median = late[late.len() / 2];
    eprintln!(
        "lateness: median {median:?}, max {:?}",
        late[late.len() - 1]
    );
    assert!(
        median < us(500),
        "median wake-up {median:?} after the deadline: {late:?}"
    );
}
