//! The CLI's client against a control socket that takes the request and never answers (a daemon
//! stalled or starved of CPU): the error says so and how long it waited, instead of the read
//! timeout's bare "Resource temporarily unavailable" as a "bad reply".
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};
use tandem_admin::{ClientError, Request, request};

#[test]
fn a_daemon_that_takes_the_request_and_never_answers_is_reported_as_not_answering_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Accept and read the request, then hold the connection open without a reply.
    let held = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        conn.read_to_end(&mut req).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        req
    });
    let started = Instant::now();
    let err = request(&path, &Request::Status, Duration::from_millis(300)).unwrap_err();
    let waited = started.elapsed();
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::NoReply { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        text.contains("did not answer within 0.3 s") && text.contains("ctl.sock"),
        "{text}"
    );
    assert!(
        waited >= Duration::from_millis(300),
        "gave up after {waited:?}"
    );
    // The request did reach the daemon: it is the reply that never came.
    assert!(!held.join().unwrap().is_empty());
}

#[test]
fn a_daemon_that_hangs_up_without_a_reply_is_still_a_bad_reply() {
    // The daemon may hang up before the client has written its request (the write then fails
    // with EPIPE) or after (the read sees end of file): a race the scheduler decides, so run it
    // often enough to see both orders. Either way the daemon was reached and did not answer.
    for round in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            drop(conn);
        });
        let err = request(&path, &Request::Status, Duration::from_secs(5)).unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(err, ClientError::BadReply(_)),
            "round {round}: {err:?}"
        );
    }
}
