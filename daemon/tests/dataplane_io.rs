//! The I/O layer on its own: batched UDP on loopback, the TUN and netlink routes in a private
//! network namespace (root only).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod support;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use support::is_root;

use tandem::dataplane::batch::{BATCH, Batch};
use tandem::dataplane::sys;

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root under CI"
    );
    eprintln!("SKIPPING {test}: needs root (run as root to exercise it)");
    true
}

#[test]
fn a_batch_of_datagrams_crosses_loopback_in_order_with_sendmmsg_and_recvmmsg() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_addr = b.local_addr().unwrap();
    let mut tx = Batch::new(2048);
    for (i, slot) in tx.slots.iter_mut().enumerate() {
        slot.start = 16;
        slot.len = 100 + i;
        slot.buf[16..16 + slot.len].fill(i as u8);
        slot.addr = b_addr;
    }
    let sent = sys::send_mmsg(a.as_raw_fd(), &tx.slots, 0..BATCH).sent;
    assert_eq!(sent, BATCH);

    let mut rx = Batch::new(2048);
    let mut got = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while got < BATCH && std::time::Instant::now() < deadline {
        let n = sys::recv_mmsg(b.as_raw_fd(), &mut rx.slots[got..], 32).unwrap();
        got += n;
    }
    assert_eq!(got, BATCH);
    for (i, slot) in rx.slots.iter().enumerate() {
        assert_eq!(slot.start, 32);
        assert_eq!(
            slot.len,
            100 + i,
            "datagram {i} arrived out of order or resized"
        );
        assert!(slot.buf[32..32 + slot.len].iter().all(|&b| b == i as u8));
        assert_eq!(slot.addr, a.local_addr().unwrap());
    }
    // Nothing pending: a non-blocking receive returns 0 rather than waiting.
    assert_eq!(sys::recv_mmsg(b.as_raw_fd(), &mut rx.slots, 0).unwrap(), 0);
}

#[test]
fn a_datagram_larger_than_its_slot_is_reported_empty_not_truncated() {
    let a = UdpSocket::bind("[::1]:0").unwrap();
    let b = UdpSocket::bind("[::1]:0").unwrap();
    a.send_to(&[7u8; 600], b.local_addr().unwrap()).unwrap();
    let mut rx = Batch::new(512);
    let mut n = 0;
    for _ in 0..1000 {
        n = sys::recv_mmsg(b.as_raw_fd(), &mut rx.slots, 0).unwrap();
        if n > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(n, 1);
    assert_eq!(rx.slots[0].len, 0);
    assert!(matches!(rx.slots[0].addr, SocketAddr::V6(_)));
}

#[test]
fn the_eventfd_wakes_an_epoll_wait_from_another_thread() {
    let ep = sys::Epoll::new().unwrap();
    let ev = sys::EventFd::new().unwrap();
    ep.add(std::os::fd::AsFd::as_fd(&ev), 7).unwrap();
    let other = ev.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        other.notify();
    });
    let mut events = [sys::EMPTY_EVENT; 4];
    let n = ep.wait(&mut events, 5000).unwrap();
    assert_eq!(n, 1);
    assert_eq!(sys::event_token(&events[0]), 7);
    ev.drain();
    assert_eq!(
        ep.wait(&mut events, 0).unwrap(),
        0,
        "drained eventfd still readable"
    );
    t.join().unwrap();
}

#[test]
fn a_tun_in_a_private_namespace_carries_packets_and_takes_netlink_routes() {
    if skip_unless_root("a_tun_in_a_private_namespace_carries_packets_and_takes_netlink_routes") {
        return;
    }
    // A fresh thread enters its own network namespace, so nothing here touches the host and
    // everything disappears when the thread ends.
    std::thread::spawn(|| {
        sys::unshare_netns().unwrap();
        let dev = tun_rs::DeviceBuilder::new()
            .name("tdmtest0")
            .mtu(1400)
            .ipv4(Ipv4Addr::new(10, 99, 0, 1), 24, None)
            .build_sync()
            .unwrap();
        dev.set_nonblocking(true).unwrap();
        let idx = sys::if_index("tdmtest0").unwrap();
        sys::route(
            sys::RouteOp::Add,
            idx,
            IpAddr::V4(Ipv4Addr::new(10, 98, 0, 0)),
            16,
        )
        .unwrap();
        // Idempotent (NLM_F_REPLACE).
        sys::route(
            sys::RouteOp::Add,
            idx,
            IpAddr::V4(Ipv4Addr::new(10, 98, 0, 0)),
            16,
        )
        .unwrap();
        sys::route(sys::RouteOp::Add, idx, "fd00:98::".parse().unwrap(), 64).unwrap();
        let routes = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap();
        assert!(
            routes.contains("fd000098000000000000000000000000 40"),
            "{routes}"
        );

        // A UDP datagram to a routed address comes out of the TUN as an IPv4 packet.
        let s = UdpSocket::bind("10.99.0.1:0").unwrap();
        s.send_to(b"hello tun", "10.98.1.2:9").unwrap();
        let mut buf = [0u8; 2000];
        let mut n = 0;
        for _ in 0..2000 {
            match dev.recv(&mut buf) {
                Ok(len) if len >= 20 && buf[0] >> 4 == 4 && buf[16..20] == [10, 98, 1, 2] => {
                    n = len;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("tun read: {e}"),
            }
        }
        assert_eq!(n, 20 + 8 + 9);
        assert_eq!(&buf[28..37], b"hello tun");

        // Deleting the route makes the destination unroutable again.
        sys::route(
            sys::RouteOp::Delete,
            idx,
            IpAddr::V4(Ipv4Addr::new(10, 98, 0, 0)),
            16,
        )
        .unwrap();
        let err = s.send_to(b"x", "10.98.1.2:9").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH));
    })
    .join()
    .unwrap();
}

#[test]
fn runs_of_equal_datagrams_go_out_as_udp_gso_and_arrive_separately_in_order() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (b_addr, c_addr) = (b.local_addr().unwrap(), c.local_addr().unwrap());
    // 70 x 1000 B to b (one full run of 64 + 6), then a 500 B tail, then 3 to c, then 2 to b.
    let mut plan: Vec<(SocketAddr, usize)> = vec![(b_addr, 1000); 70];
    plan.push((b_addr, 500));
    plan.extend([(c_addr, 300), (c_addr, 300), (c_addr, 200)]);
    plan.extend([(b_addr, 1000), (b_addr, 1000)]);
    let mut tx = Batch::new(2048);
    for (i, (addr, len)) in plan.iter().enumerate() {
        let slot = &mut tx.slots[i];
        slot.start = 64;
        slot.len = *len;
        slot.buf[64..64 + len].fill(i as u8);
        slot.addr = *addr;
    }
    let mut gso = true;
    let sent = sys::send_mmsg_gso(a.as_raw_fd(), &tx.slots, 0..plan.len(), &mut gso).sent;
    assert_eq!(sent, plan.len());
    assert!(
        gso,
        "loopback supports UDP GSO: the fast path must have been used"
    );

    let drain = |sock: &UdpSocket, want: usize| {
        let mut rx = Batch::new(2048);
        let mut got = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got < want && std::time::Instant::now() < deadline {
            got += sys::recv_mmsg(sock.as_raw_fd(), &mut rx.slots[got..], 0).unwrap();
        }
        rx.slots.truncate(got);
        rx.slots
            .into_iter()
            .map(|s| (s.len, s.buf[0]))
            .collect::<Vec<_>>()
    };
    let at_b: Vec<(usize, u8)> = plan
        .iter()
        .enumerate()
        .filter(|(_, (a, _))| *a == b_addr)
        .map(|(i, (_, l))| (*l, i as u8))
        .collect();
    let at_c: Vec<(usize, u8)> = plan
        .iter()
        .enumerate()
        .filter(|(_, (a, _))| *a == c_addr)
        .map(|(i, (_, l))| (*l, i as u8))
        .collect();
    assert_eq!(drain(&b, at_b.len()), at_b);
    assert_eq!(drain(&c, at_c.len()), at_c);
}

#[test]
fn a_udp_gro_socket_takes_a_gso_run_whole_and_splits_it_by_the_segment_size_it_reports() {
    use std::os::fd::AsFd;
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    sys::set_udp_gro(b.as_fd()).unwrap();
    // 40 x 1000 B and a 500 B tail (one GSO run), then one 300 B datagram.
    let mut plan: Vec<usize> = vec![1000; 40];
    plan.extend([500, 300]);
    let mut tx = Batch::new(2048);
    for (i, len) in plan.iter().enumerate() {
        let slot = &mut tx.slots[i];
        slot.start = 64;
        slot.len = *len;
        slot.buf[64..64 + len].fill(i as u8);
        slot.addr = b_addr;
    }
    let mut gso = true;
    let sent = sys::send_mmsg_gso(a.as_raw_fd(), &tx.slots, 0..plan.len(), &mut gso).sent;
    assert_eq!(sent, plan.len());
    assert!(gso, "loopback supports UDP GSO");

    let mut area = vec![0u8; 4 * sys::GRO_MSG_MAX];
    let blank = sys::GroMsg {
        len: 0,
        seg: 1,
        addr: a_addr,
    };
    let mut msgs = vec![blank; 4];
    let mut got: Vec<(sys::GroMsg, Vec<u8>)> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while got.iter().map(|(m, _)| m.len).sum::<usize>() < plan.iter().sum::<usize>()
        && std::time::Instant::now() < deadline
    {
        let n = sys::recv_mmsg_gro(b.as_raw_fd(), &mut area, sys::GRO_MSG_MAX, &mut msgs).unwrap();
        for (m, chunk) in msgs[..n].iter().zip(area.chunks(sys::GRO_MSG_MAX)) {
            got.push((*m, chunk[..m.len].to_vec()));
        }
    }
    // The run arrives as one message (the kernel keeps a GSO send whole for a GRO socket),
    // the lone datagram as another.
    assert_eq!(
        got.len(),
        2,
        "messages: {:?}",
        got.iter().map(|(m, _)| *m).collect::<Vec<_>>()
    );
    let (run, single) = (&got[0], &got[1]);
    assert_eq!(
        (run.0.len, run.0.seg, run.0.addr),
        (40 * 1000 + 500, 1000, a_addr)
    );
    assert_eq!((single.0.len, single.0.seg), (300, 300));
    // Split by the reported segment size, every datagram is where it was sent, in order.
    let split: Vec<(usize, u8)> = run
        .1
        .chunks(run.0.seg)
        .chain(single.1.chunks(single.0.seg))
        .map(|d| {
            assert!(
                d.iter().all(|&b| b == d[0]),
                "a datagram's bytes were mixed"
            );
            (d.len(), d[0])
        })
        .collect();
    let want: Vec<(usize, u8)> = plan
        .iter()
        .enumerate()
        .map(|(i, l)| (*l, i as u8))
        .collect();
    assert_eq!(split, want);
}

#[test]
fn a_full_send_buffer_ends_the_batch_at_once_and_counts_the_rest_as_queue_full() {
    if skip_unless_root(
        "a_full_send_buffer_ends_the_batch_at_once_and_counts_the_rest_as_queue_full",
    ) {
        return;
    }
    // A stalled neighbour, in a namespace of this thread's own: the next hop never answers ARP,
    // so every datagram waits in the neighbour's queue, still charged to the socket's send
    // buffer, until the buffer is full. The neighbour queue is made larger than the buffer and
    // resolution slow (100 probes, 10 s apart), so nothing frees the buffer during the test.
    std::thread::spawn(|| {
        sys::unshare_netns().unwrap();
        for cmd in [
            "ip link add tdmq0 type veth peer name tdmq1",
            "ip addr add 10.97.0.1/24 dev tdmq0",
            "ip link set tdmq0 up",
            "ip link set tdmq1 arp off up",
        ] {
            let out = support::sh(&["sh", "-c", cmd]);
            assert!(out.status.success(), "{cmd}: {out:?}");
        }
        for (knob, v) in [
            ("unres_qlen_bytes", "67108864"),
            ("mcast_solicit", "100"),
            ("retrans_time_ms", "10000"),
        ] {
            std::fs::write(format!("/proc/sys/net/ipv4/neigh/tdmq0/{knob}"), v).unwrap();
        }
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        sock.set_send_buffer_size(64 << 10).unwrap();
        sock.set_nonblocking(true).unwrap();
        sock.bind(&SocketAddr::from(([10, 97, 0, 1], 0)).into())
            .unwrap();
        let sock: UdpSocket = sock.into();
        let mut tx = Batch::new(2048);
        for slot in tx.slots.iter_mut() {
            slot.start = 16;
            slot.len = 1400;
            slot.addr = SocketAddr::from(([10, 97, 0, 2], 9));
        }
        let t0 = std::time::Instant::now();
        let mut total = sys::Sent::default();
        for _ in 0..4 {
            let s = sys::send_mmsg(sock.as_raw_fd(), &tx.slots, 0..BATCH);
            assert_eq!(s.sent + s.queue_full, BATCH, "{s:?}");
            total.sent += s.sent;
            total.queue_full += s.queue_full;
        }
        let mut gso = true;
        let s = sys::send_mmsg_gso(sock.as_raw_fd(), &tx.slots, 0..BATCH, &mut gso);
        let took = t0.elapsed();
        eprintln!("stalled neighbour: {total:?}, then GSO {s:?}, in {took:?}");
        // 64 KiB (doubled by the kernel) holds a few dozen 1400-byte datagrams.
        assert!(total.sent > 0 && total.sent < BATCH, "{total:?}");
        assert_eq!(total.sent + total.queue_full, 4 * BATCH, "{total:?}");
        assert_eq!(s.sent, 0, "the buffer is still full: {s:?}");
        assert_eq!(s.queue_full, BATCH, "{s:?}");
        assert!(
            took < std::time::Duration::from_secs(1),
            "the sends waited for the stalled path: {took:?}"
        );
    })
    .join()
    .unwrap();
}
