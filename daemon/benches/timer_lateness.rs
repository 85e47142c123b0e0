//! How late the data-plane loop wakes for a timer: the loop's own sleep ([`sleep_budget`] +
//! [`Epoll::wait_timeout`], `epoll_pwait2` to the nanosecond) against the millisecond
//! `epoll_wait` it replaced (timeout rounded up), on the same machine in the same run. Each
//! sample arms a deadline a random 0.1..12 ms ahead (the `fast` profile's keepalive interval is
//! 5 ms), sleeps as the loop does until it has passed, and records `wake - deadline`.
//!
//! `cargo bench -p tandem --bench timer_lateness [-- SAMPLES]` (default 2000 per method)
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use tandem::dataplane::sys::{EMPTY_EVENT, Epoll, timeout_ms_ceil};
use tandem::dataplane::worker::sleep_budget;

/// xorshift64: the offsets only need to be spread, not unpredictable.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn lateness(epoll: &Epoll, samples: usize, precise: bool) -> Vec<Duration> {
    let mut events = [EMPTY_EVENT; 4];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let offset = Duration::from_micros(100 + next(&mut rng) % 11_900);
        let deadline = Instant::now() + offset;
        // As the loop does: sleep, and sleep again if woken before the deadline.
        loop {
            let now = Instant::now();
            if now >= deadline {
                out.push(now - deadline);
                break;
            }
            let budget = sleep_budget(Some(deadline), None, now);
            if precise {
                epoll.wait_timeout(&mut events, budget).unwrap();
            } else {
                epoll.wait(&mut events, timeout_ms_ceil(budget)).unwrap();
            }
        }
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let samples = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(2000);
    let epoll = Epoll::new().unwrap();
    println!("timer lateness (wake - deadline), {samples} deadlines 0.1..12 ms ahead");
    println!("{:<38} {:>9} {:>9} {:>9}", "method", "p50", "p99", "max");
    for (name, precise) in [
        ("epoll_wait, ms rounded up (before)", false),
        ("epoll_pwait2, timespec (after)", true),
    ] {
        let l = lateness(&epoll, samples, precise);
        let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        println!(
            "{name:<38} {:>9} {:>9} {:>9}",
            us(pct(&l, 0.5)),
            us(pct(&l, 0.99)),
            us(l[l.len() - 1])
        );
    }
    if !epoll.precise() {
        println!("(epoll_pwait2 is not available here: the second row fell back to epoll_wait)");
    }
}
