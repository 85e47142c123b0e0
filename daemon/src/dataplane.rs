//! The data plane: TUN and UDP I/O, buffer pool, batching; drives the engine.
//!
//! # Pipeline
//!
//! One thread owns the [`tandem_engine::Engine`], the TUN, one UDP socket per tunnel and a
//! wake-up eventfd, and runs a level-triggered epoll loop over them ([`worker::DataPlane::run`]):
//!
//! ```text
//! TUN readable:    read up to BATCH packets, each into a slot at offset HEADROOM
//!                  -> path::seal_batch: engine.handle_tun_packet routes, checks and seals each
//!                     packet in place (ESP header written into the headroom, trailer + ICV into
//!                     the tailroom), tagging the slot with its tunnel's socket
//!                  -> one sendmmsg per socket, slots in order (per-tunnel order is kept); the
//!                     sockets are non-blocking: what a full send buffer refuses is dropped and
//!                     counted (`send_queue_full`), the loop never waits for a path
//!                  -> ICMP errors the engine wrote (too big, unreachable) go back into the TUN
//! socket readable: recvmmsg up to BATCH datagrams into slots at offset HEADROOM
//!                  -> path::open_batch: engine.handle_datagram authenticates and decrypts in
//!                     place (replay pre-check -> AEAD -> commit), tags inner packets for the TUN
//!                  -> TUN writes, in order; control packets -> engine.poll_transmit -> send_to
//! timer due:       engine.handle_timeout (keepalives, DPD, handshakes, rekey, failback), at the
//!                  top of each turn and between batches (a keepalive waits for one batch at
//!                  most); when the loop has not polled for 1 ms the ready sockets are read
//!                  first, so no liveness deadline is judged with the peer's packets unread;
//!                  lateness is measured (`tandem_timer_lateness_seconds`)
//! eventfd:         commands from the control plane (status, metrics, failover, reload, drill,
//!                  shutdown), answered over oneshot channels
//! ```
//!
//! Per-tunnel interfaces (`routing = "interfaces"`, [`ifaces`]) join the same loop: a read from
//! one goes through `path::seal_batch_on` (that tunnel only), and what a tunnel with an
//! interface decrypts is written to that interface; carriers follow the tunnels' states.
//!
//! Between batches the loop drains `engine.poll_event()` into `tracing` events (one per state
//! change / switch / handshake) and sd_notify `STATUS=`, and feeds the systemd watchdog.
//!
//! The slots ([`batch::Batch`]) are allocated once; nothing on this path allocates (proven by
//! `daemon/tests/dataplane_alloc.rs`). Counters live in the engine as plain `u64`s and are read
//! by the control plane only through a command, so the hot path takes no lock and no map lookup.
//!
//! # Offloads
//!
//! - TUN: opened with `IFF_VNET_HDR` and TSO4/TSO6 (+ USO when the kernel has it) through
//!   `tun-rs`; one read may be a 64 KiB super-packet, split (checksums completed) into MTU-size
//!   segments straight into the slots before sealing. On the way back, decrypted TCP segments
//!   (and UDP datagrams with USO) of one flow, IPv4 or IPv6, are coalesced by [`gro::TunGro`]
//!   into one `GSO_TCPV4`/`GSO_TCPV6`/`GSO_UDP_L4` write; other packets go out one per write
//!   with an all-zero virtio-net header. If the kernel refuses the offloads, or
//!   `TANDEM_TUN_OFFLOAD=0`, the TUN is plain (one packet per read and write).
//! - UDP: runs of equal-size sealed datagrams to one peer leave as one `UDP_SEGMENT` (GSO)
//!   message whose iovecs point at the slots (no copy); a path that refuses GSO falls back to
//!   one datagram per `sendmmsg` entry. Receive: the sockets have `UDP_GRO` on, so the kernel
//!   keeps a GSO sender's run whole (instead of segmenting it into one skb per datagram before
//!   the socket queue) and coalesces what a GRO-capable NIC received; one `recvmmsg` entry is
//!   then a run of datagrams of one size from one sender (`sys::recv_mmsg_gro`, the size in a
//!   cmsg), which `path::open_coalesced` opens in place, datagram by datagram, where it landed
//!   (no copy), before [`gro::TunGro`] coalesces the inner packets again for the TUN. Each
//!   entry needs a 64 KiB buffer, so a receive takes `worker::GRO_MSGS` (32) entries; the
//!   area is mapped lazily, so only what traffic touches is resident. A kernel without
//!   `UDP_GRO` (or `TANDEM_UDP_GRO=0`) gets the slot path: `recvmmsg` of [`batch::BATCH`]
//!   single datagrams.
//!
//! # Tuning constants
//!
//! [`batch::BATCH`] (128, packets per batch), [`sys::MAX_MMSG`] (128, messages per
//! `sendmmsg`/`recvmmsg`), [`sys::GSO_MAX_SEGMENTS`] (64) and [`sys::GSO_MAX_BYTES`] (one UDP
//! GSO send), `worker::SEGMENT_RESERVE` (64 free slots before an offloaded TUN read),
//! `worker::BATCHES_PER_WAKE` (4, batches from one fd before serving the others),
//! `worker::SOCKET_BUFFER` (4 MiB socket buffers), `worker::EPOLL_EVENTS` (16),
//! `worker::BUSY_POLL` (100 µs), `worker::GRO_MSGS` (32 coalesced messages per receive): each
//! documented where it is defined.
//!
//! # Busy polling
//!
//! After the last packet the loop polls (`epoll_wait` with a zero timeout, `sched_yield` between
//! polls) for `worker::BUSY_POLL` before it sleeps, so the answer to a packet it just forwarded
//! (ping reply, ACK) is read without a wake-up; `TANDEM_BUSY_POLL_US` overrides the window (0 =
//! off). Cost: at most one window of a yielding core per burst of traffic (a ping every 20 ms:
//! ~1 % of a core per daemon); nothing on an idle link. Same-run A/B (`lab bench --ping-only`):
//! ping RTT through two daemons 0.28 -> 0.23 ms (plain routing 0.08 ms).
//!
//! # Not (yet) done
//!
//! Multi-queue TUN / one worker per core: one data-plane thread.

pub mod batch;
pub mod drill;
pub mod gro;
pub mod ifaces;
pub mod loopback;
pub mod path;
pub mod sys;
pub mod worker;
