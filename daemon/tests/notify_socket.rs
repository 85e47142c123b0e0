//! `tandem::notify` against a real `NOTIFY_SOCKET`: a bound datagram socket, as systemd's
//! manager binds it (both a filesystem path and an abstract `@name`), receives each message in
//! order with the exact `sd_notify(3)` content.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

use tandem::notify::{Notifier, monotonic_usec};

fn unique(tag: &str) -> String {
    format!(
        "tandem-notify-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )
    .replace(['(', ')'], "")
}

struct PathSocket {
    path: PathBuf,
    sock: UnixDatagram,
}

impl PathSocket {
    fn bind(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.sock", unique(tag)));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self { path, sock }
    }
}

impl Drop for PathSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn lifecycle_messages_arrive_in_order_with_sd_notify_content() {
    let server = PathSocket::bind("path");
    let n = Notifier::new(server.path.as_os_str()).unwrap();
    assert_eq!(n.address(), server.path.as_os_str());

    n.status("starting").unwrap();
    n.ready_with_status("prod-vpc: tunnel1 up (active), tunnel2 up")
        .unwrap();
    n.watchdog().unwrap();
    let before = monotonic_usec().unwrap();
    n.reloading().unwrap();
    let after = monotonic_usec().unwrap();
    n.ready().unwrap();
    n.status("line one\nline two").unwrap();
    n.stopping().unwrap();

    assert_eq!(recv(&server.sock), "STATUS=starting");
    assert_eq!(
        recv(&server.sock),
        "READY=1\nSTATUS=prod-vpc: tunnel1 up (active), tunnel2 up"
    );
    assert_eq!(recv(&server.sock), "WATCHDOG=1");
    let reloading = recv(&server.sock);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .unwrap()
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    assert_eq!(lines.next(), None);
    assert_eq!(recv(&server.sock), "READY=1");
    assert_eq!(
        recv(&server.sock),
        "STATUS=line one line two",
        "a status is always one line"
    );
    assert_eq!(recv(&server.sock), "STOPPING=1");
}

#[test]
fn abstract_namespace_socket_receives_messages() {
    let name = unique("abstract");
    let server =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let spelled = format!("@{name}");
    let n = Notifier::new(OsStr::new(&spelled)).unwrap();
    assert_eq!(n.address(), OsStr::new(&spelled));
    n.ready().unwrap();
    n.watchdog().unwrap();
    assert_eq!(recv(&server), "READY=1");
    assert_eq!(recv(&server), "WATCHDOG=1");
}

#[test]
fn sending_to_a_vanished_manager_is_an_error_not_a_panic() {
    let server = PathSocket::bind("gone");
    let n = Notifier::new(server.path.as_os_str()).unwrap();
    drop(server);
    assert!(n.ready().is_err());
}
