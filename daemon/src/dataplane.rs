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
//!                  -> one sendmmsg per socket, slots in order (per-tunnel order is kept)
//!                  -> ICMP errors the engine wrote (too big, unreachable) go back into the TUN
//! socket readable: recvmmsg up to BATCH datagrams into slots at offset HEADROOM
//!                  -> path::open_batch: engine.handle_datagram authenticates and decrypts in
//!                     place (replay pre-check -> AEAD -> commit), tags inner packets for the TUN
//!                  -> TUN writes, in order; control packets -> engine.poll_transmit -> send_to
//! timer due:       engine.handle_timeout (keepalives, DPD, handshakes, rekey, failback)
//! eventfd:         commands from the control plane (status, metrics, failover, reload, drill,
//!                  shutdown), answered over oneshot channels
//! ```
//!
//! Between batches the loop drains `engine.poll_event()` into `tracing` events (one per state
//! change / switch / handshake) and sd_notify `STATUS=`, and feeds the systemd watchdog.
//!
//! The slots ([`batch::Batch`]) are allocated once; nothing on this path allocates (proven by
//! `daemon/tests/dataplane_alloc.rs`). Counters live in the engine as plain `u64`s and are read
//! by the control plane only through a command, so the hot path takes no lock and no map lookup.
//!
//! # Tuning constants
//!
//! [`batch::BATCH`] (128, packets per batch), [`sys::MAX_MMSG`] (128, messages per
//! `sendmmsg`/`recvmmsg`), `worker::BATCHES_PER_WAKE` (4, batches from one fd before serving the
//! others), `worker::SOCKET_BUFFER` (4 MiB socket buffers), `worker::EPOLL_EVENTS` (16): each
//! documented where it is defined.
//!
//! # Not (yet) done
//!
//! TUN `IFF_VNET_HDR` offloads (TSO/USO super-packets) and UDP GSO/GRO are not used: every
//! packet is one TUN read/write and one mmsg entry. Multi-queue TUN / one worker per core is not
//! done either: one data-plane thread.

pub mod batch;
pub mod drill;
pub mod loopback;
pub mod path;
pub mod sys;
pub mod worker;
