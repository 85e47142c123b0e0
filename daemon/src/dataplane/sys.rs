//! The syscall layer: the only `unsafe` in tandem.
//!
//! Thin, allocation-free wrappers over epoll (`epoll_pwait2`: timeouts to the nanosecond),
//! eventfd, `recvmmsg`/`sendmmsg`, the rtnetlink route and link-state messages and the TUN carrier
//! ioctl. Every `unsafe` block states why it is sound. Everything above this module is safe Rust working on
//! [`Slot`]s.

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::batch::Slot;

/// Largest batch one `recvmmsg`/`sendmmsg` call handles; the arrays for it live on the stack.
/// 128 is wireguard-go's `IdealBatchSize`: past it the syscall cost is already amortised below the
/// per-packet crypto cost, and a bigger batch only adds latency and cache pressure.
pub const MAX_MMSG: usize = 128;

// ---------------------------------------------------------------------------------------------
// epoll + eventfd

/// An epoll instance; tokens are caller-chosen `u64`s.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    /// `epoll_pwait2` works here (cleared for good at its first `ENOSYS`: Linux < 5.11, or a
    /// seccomp filter that does not know it).
    pwait2: AtomicBool,
}

/// The kernel's `struct __kernel_timespec` (64-bit fields on every architecture), which
/// `epoll_pwait2` takes; `libc::timespec` has a 32-bit `tv_sec` on some 32-bit targets.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

impl KernelTimespec {
    fn of(d: Duration) -> Self {
        KernelTimespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        }
    }
}

/// A timeout in whole milliseconds for `epoll_wait`, rounded up (waking early would spin) and
/// capped at `i32::MAX`.
pub fn timeout_ms_ceil(d: Duration) -> i32 {
    i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

impl Epoll {
    /// A new close-on-exec epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with a valid flag; the returned fd is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            pwait2: AtomicBool::new(true),
        })
    }

    /// Watch `fd` for readability (level-triggered), reported with `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are valid for the duration of the call and `ev` is a valid, initialised
        // epoll_event that the kernel only reads.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Stop watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; the event argument is ignored for EPOLL_CTL_DEL but must be non-null
        // on old kernels.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Wait up to `timeout_ms` (-1 = forever) and return the ready tokens in `events[..n]`.
    /// An interrupted wait (EINTR) returns 0 events.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a valid, writable array of `max` epoll_event structs.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(n as usize)
    }

    /// Wait up to `timeout`, to the nanosecond: `epoll_pwait2` (Linux >= 5.11) takes a timespec,
    /// so the wake-up comes at the deadline plus the thread's timer slack (50 µs by default),
    /// where `epoll_wait`'s whole milliseconds, rounded up, add up to 1 ms more (docs/protocol.md,
    /// timers). Where the kernel lacks it (`ENOSYS`) this falls back to [`Self::wait`] with the
    /// timeout rounded up to the millisecond, once and for good. EINTR returns 0 events.
    pub fn wait_timeout(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Duration,
    ) -> io::Result<usize> {
        if self.pwait2.load(Ordering::Relaxed) {
            let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
            let ts = KernelTimespec::of(timeout);
            // SAFETY: `events` is a valid, writable array of `max` epoll_event structs; `ts` is a
            // valid __kernel_timespec the kernel only reads during the call; a null sigmask (with
            // size 0) leaves the signal mask alone, as epoll_wait does.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    max,
                    &ts as *const KernelTimespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => return Ok(0),
                Some(libc::ENOSYS) => {
                    self.pwait2.store(false, Ordering::Relaxed);
                    tracing::info!(
                        "epoll_pwait2 unavailable (Linux < 5.11?): timers wake up to 1 ms late"
                    );
                }
                _ => return Err(err),
            }
        }
        self.wait(events, timeout_ms_ceil(timeout))
    }

    /// Whether [`Self::wait_timeout`] still uses `epoll_pwait2` (false after an `ENOSYS`).
    pub fn precise(&self) -> bool {
        self.pwait2.load(Ordering::Relaxed)
    }
}

/// An empty `epoll_event`, to size the wait array.
pub const EMPTY_EVENT: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

/// A token of a ready event (the field is packed on x86_64, so read it by value).
pub fn event_token(ev: &libc::epoll_event) -> u64 {
    ev.u64
}

/// A non-blocking eventfd: the control plane's doorbell to the data-plane loop.
#[derive(Debug)]
pub struct EventFd(File);

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        Ok(Self(unsafe { File::from_raw_fd(fd) }))
    }

    /// Wake the waiter (never blocks; a saturated counter is still a wake-up).
    pub fn notify(&self) {
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    /// Reset the counter after a wake-up.
    pub fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = (&self.0).read(&mut b);
    }

    /// A second handle on the same eventfd (for the other thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

// ---------------------------------------------------------------------------------------------
// socket addresses

fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe {
                (out as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe {
                (out as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can contain.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it can contain.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// recvmmsg / sendmmsg

/// Receive up to `slots.len()` (at most [`MAX_MMSG`]) datagrams without blocking. Datagram `i`
/// lands at `slots[i].buf[offset..]`; `slots[i].start`, `.len` and `.addr` are set. A datagram
/// that did not fit (truncated) gets `len = 0`, which the caller drops as malformed.
/// Returns 0 when nothing is pending.
pub fn recv_mmsg(fd: RawFd, slots: &mut [Slot], offset: usize) -> io::Result<usize> {
    let n = slots.len().min(MAX_MMSG);
    // SAFETY: all-zero is a valid value for these plain C structs (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; MAX_MMSG] = unsafe { mem::zeroed() };
    for i in 0..n {
        let buf = &mut slots[i].buf[offset..];
        iovs[i] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: `hdrs[..n]` point at `iovs`/`names` and at the slot buffers, all of which outlive
    // the call and are not otherwise borrowed during it; the kernel writes at most `iov_len` bytes
    // per buffer and at most `msg_namelen` bytes per name.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let got = received(rc)?;
    for i in 0..got {
        let slot = &mut slots[i];
        slot.start = offset;
        slot.len = if hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            0
        } else {
            hdrs[i].msg_len as usize
        };
        slot.addr = from_sockaddr(&names[i]).unwrap_or(slot.addr);
    }
    Ok(got)
}

/// `UDP_GRO` (linux/udp.h): the socket option that lets the kernel hand one `recvmsg` a run of
/// coalesced datagrams (and accept a GSO sender's super-datagram whole), with a cmsg of the
/// same number carrying the segment size.
const UDP_GRO: libc::c_int = 104;

/// Largest coalesced message one UDP GRO receive can return: a UDP datagram's 16-bit length.
/// A receive buffer smaller than that would truncate a coalesced message and lose its tail
/// (`udp_recvmsg` discards what does not fit), so every message buffer is this large.
pub const GRO_MSG_MAX: usize = 65_535;

/// Ask the kernel to coalesce received datagrams on `fd` (`UDP_GRO`, Linux >= 5.0). Fails on
/// kernels without it; the caller then receives one datagram per message.
pub fn set_udp_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is a valid socket for the call; `on` is a live c_int whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One message of a UDP GRO receive: `len` bytes at the start of its buffer, made of datagrams
/// of `seg` bytes each (the last may be shorter; `seg == len` for a single datagram), all from
/// `addr`. `len == 0`: nothing usable (truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroMsg {
    /// Bytes received.
    pub len: usize,
    /// Segment size: every datagram but the last is this long.
    pub seg: usize,
    /// Sender.
    pub addr: SocketAddr,
}

/// `CMSG_SPACE(sizeof(int))` on 64-bit Linux is 24; room for one more in case the kernel adds
/// another control message (it then sets MSG_CTRUNC, which costs nothing here).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct GroCmsg([u8; 48]);

/// Receive up to `msgs.len()` (at most [`MAX_MMSG`]) messages without blocking on a socket with
/// `UDP_GRO` on: message `i` lands at `area[i * stride..]` (`stride` is at least
/// [`GRO_MSG_MAX`], or a coalesced message could be truncated; as many messages as `area` holds),
/// `msgs[i]` says how it splits. Returns 0 when nothing is pending.
pub fn recv_mmsg_gro(
    fd: RawFd,
    area: &mut [u8],
    stride: usize,
    msgs: &mut [GroMsg],
) -> io::Result<usize> {
    let stride = stride.max(GRO_MSG_MAX);
    let n = (area.len() / stride).min(msgs.len()).min(MAX_MMSG);
    // SAFETY: all-zero is a valid value for these plain C structs (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; MAX_MMSG] = unsafe { mem::zeroed() };
    let mut cmsgs = [GroCmsg([0; 48]); MAX_MMSG];
    for (i, buf) in area.chunks_exact_mut(stride).take(n).enumerate() {
        iovs[i] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_control = cmsgs[i].0.as_mut_ptr().cast();
        hdrs[i].msg_hdr.msg_controllen = cmsgs[i].0.len();
    }
    // SAFETY: `hdrs[..n]` point at `iovs`, `names`, `cmsgs` and the caller's buffers, all of
    // which outlive the call and are not otherwise borrowed during it; the kernel writes at most
    // `iov_len` bytes per buffer, `msg_namelen` per name and `msg_controllen` per control buffer.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let got = received(rc)?;
    for i in 0..got {
        let h = &hdrs[i].msg_hdr;
        let len = if h.msg_flags & libc::MSG_TRUNC != 0 {
            0
        } else {
            hdrs[i].msg_len as usize
        };
        let mut seg = len;
        // SAFETY: the kernel filled `msg_control` up to `msg_controllen` (which it updated) with
        // well-formed cmsghdrs inside `cmsgs[i]`; CMSG_FIRSTHDR/NXTHDR stay within that length,
        // and a UDP_GRO cmsg carries one int (read unaligned, as CMSG_DATA need not be aligned
        // for it).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP
                    && (*c).cmsg_type == UDP_GRO
                    && (*c).cmsg_len
                        >= libc::CMSG_LEN(mem::size_of::<libc::c_int>() as u32) as usize
                {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    if v > 0 {
                        seg = (v as usize).min(len.max(1));
                    }
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        msgs[i] = GroMsg {
            len,
            seg: seg.max(1),
            addr: from_sockaddr(&names[i]).unwrap_or(msgs[i].addr),
        };
    }
    Ok(got)
}

/// What one batched send did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams not sent because the socket's send buffer was full (`EAGAIN` on a non-blocking
    /// socket): the first refusal ends the batch, the rest of it is counted here too.
    pub queue_full: usize,
}

/// Send `slots[i].buf[start..start + len]` to `slots[i].addr` for every index yielded by `which`
/// (at most [`MAX_MMSG`] of them; more are ignored), in order, on one socket. A datagram the
/// kernel refuses (unreachable, too big) is skipped; on a full send buffer (`EAGAIN`, the socket
/// is non-blocking) the rest is given up and counted in [`Sent::queue_full`]: the data plane never
/// waits for a path that does not drain.
pub fn send_mmsg(fd: RawFd, slots: &[Slot], which: impl Iterator<Item = usize>) -> Sent {
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut hdrs: [libc::mmsghdr; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; MAX_MMSG] = unsafe { mem::zeroed() };
    let mut n = 0;
    for i in which.take(MAX_MMSG) {
        let slot = &slots[i];
        let data = &slot.buf[slot.start..slot.start + slot.len];
        // The kernel only reads through iov_base for a send.
        iovs[n] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let namelen = to_sockaddr(&slot.addr, &mut names[n]);
        hdrs[n].msg_hdr.msg_iov = &mut iovs[n];
        hdrs[n].msg_hdr.msg_iovlen = 1;
        hdrs[n].msg_hdr.msg_name = (&mut names[n] as *mut libc::sockaddr_storage).cast();
        hdrs[n].msg_hdr.msg_namelen = namelen;
        n += 1;
    }
    let mut sent = 0;
    let mut next = 0;
    while next < n {
        // SAFETY: `hdrs[next..n]` point at live `iovs`/`names` and slot buffers that outlive the
        // call; for a send the kernel only reads them.
        let rc =
            unsafe { libc::sendmmsg(fd, hdrs[next..].as_mut_ptr(), (n - next) as libc::c_uint, 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Sent {
                        sent,
                        queue_full: n - next,
                    };
                }
                // The first remaining datagram was refused (no route, unreachable, too big…):
                // skip it.
                _ => next += 1,
            }
            continue;
        }
        let rc = rc as usize;
        sent += rc;
        next += rc;
    }
    Sent {
        sent,
        queue_full: 0,
    }
}

/// `UDP_SEGMENT` (linux/udp.h): the cmsg/sockopt carrying the UDP GSO segment size.
const UDP_SEGMENT: libc::c_int = 103;

/// Most datagrams in one UDP GSO send: the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels
/// (128 since 6.x); 64 works everywhere and already covers a 64 KiB TSO super-packet.
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes in one UDP GSO send: a UDP datagram's 16-bit length field, minus the IPv6
/// header room the kernel checks against (65535 - 40 - 8).
pub const GSO_MAX_BYTES: usize = 65_487;

/// `CMSG_SPACE(sizeof(u16))` on 64-bit Linux, as an aligned buffer.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct GsoCmsg([u8; 24]);

/// Like [`send_mmsg`], but consecutive datagrams to the same address whose lengths are equal
/// (the last of a run may be shorter) go out as one UDP GSO send (`UDP_SEGMENT`): the kernel
/// walks its stack once per run instead of once per datagram. The datagrams stay in separate
/// slots: each run is one message whose iovecs point at them (no copy). Order is kept.
///
/// `*gso` says whether to try; when the kernel refuses a GSO send (EIO: no checksum offload on
/// the route's device; EINVAL: too old), it is cleared and the rest goes out as [`send_mmsg`].
/// A full send buffer ends the batch as in [`send_mmsg`].
pub fn send_mmsg_gso(
    fd: RawFd,
    slots: &[Slot],
    which: impl Iterator<Item = usize>,
    gso: &mut bool,
) -> Sent {
    if !*gso {
        return send_mmsg(fd, slots, which);
    }
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut hdrs: [libc::mmsghdr; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_MMSG] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; MAX_MMSG] = unsafe { mem::zeroed() };
    let mut cmsgs = [GsoCmsg([0; 24]); MAX_MMSG];
    // Slot index of each iovec, and the first iovec of each message (for the fallback).
    let mut iov_slot = [0usize; MAX_MMSG];
    let mut msg_first_iov = [0usize; MAX_MMSG];
    let mut msg_segs = [0usize; MAX_MMSG];
    let (mut n_iov, mut n_msg) = (0usize, 0usize);
    let mut seg_size = 0usize;
    let mut run_bytes = 0usize;
    let mut run_open = false;
    for i in which.take(MAX_MMSG) {
        let slot = &slots[i];
        let data = &slot.buf[slot.start..slot.start + slot.len];
        let joins = run_open
            && slot.addr == slots[iov_slot[n_iov - 1]].addr
            && msg_segs[n_msg - 1] < GSO_MAX_SEGMENTS
            && run_bytes + data.len() <= GSO_MAX_BYTES
            && data.len() <= seg_size
            && slots[iov_slot[n_iov - 1]].len == seg_size;
        if !joins {
            names[n_msg] = zeroed_storage();
            let namelen = to_sockaddr(&slot.addr, &mut names[n_msg]);
            hdrs[n_msg].msg_hdr.msg_name =
                (&mut names[n_msg] as *mut libc::sockaddr_storage).cast();
            hdrs[n_msg].msg_hdr.msg_namelen = namelen;
            msg_first_iov[n_msg] = n_iov;
            msg_segs[n_msg] = 0;
            seg_size = data.len();
            run_bytes = 0;
            n_msg += 1;
            run_open = true;
        }
        iovs[n_iov] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        iov_slot[n_iov] = i;
        n_iov += 1;
        msg_segs[n_msg - 1] += 1;
        run_bytes += data.len();
    }
    for m in 0..n_msg {
        let first = msg_first_iov[m];
        hdrs[m].msg_hdr.msg_iov = &mut iovs[first];
        hdrs[m].msg_hdr.msg_iovlen = msg_segs[m];
        if msg_segs[m] > 1 {
            let size = u16::try_from(iovs[first].iov_len).unwrap_or(u16::MAX);
            let buf = &mut cmsgs[m];
            hdrs[m].msg_hdr.msg_control = buf.0.as_mut_ptr().cast();
            hdrs[m].msg_hdr.msg_controllen = buf.0.len();
            // SAFETY: msg_control points at a 24-byte, 8-aligned buffer owned by `cmsgs`, which
            // is CMSG_SPACE(2) bytes: room for exactly one cmsghdr carrying a u16.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&hdrs[m].msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
            }
        }
    }
    let mut sent = 0;
    let mut next = 0;
    while next < n_msg {
        // SAFETY: `hdrs[next..n_msg]` point at live iovecs, names, control buffers and slot
        // buffers that outlive the call; for a send the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                hdrs[next..].as_mut_ptr(),
                (n_msg - next) as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                    if msg_segs[next] > 1 =>
                {
                    // No GSO on this path: send the rest one datagram per message, from now on.
                    *gso = false;
                    let from = msg_first_iov[next];
                    let rest = send_mmsg(fd, slots, iov_slot[from..n_iov].iter().copied());
                    return Sent {
                        sent: sent + rest.sent,
                        queue_full: rest.queue_full,
                    };
                }
                Some(e) if e == libc::EAGAIN || e == libc::EWOULDBLOCK => {
                    return Sent {
                        sent,
                        queue_full: msg_segs[next..n_msg].iter().sum(),
                    };
                }
                _ => {
                    // This message was refused (unreachable, too big…): skip it.
                    next += 1;
                    continue;
                }
            }
        }
        sent += msg_segs[next..next + rc as usize].iter().sum::<usize>();
        next += rc as usize;
    }
    Sent {
        sent,
        queue_full: 0,
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    unsafe { mem::zeroed() }
}

// ---------------------------------------------------------------------------------------------
// rtnetlink routes (safe: socket2 does the syscalls, we build the bytes)

/// Add or remove a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// RTM_NEWROUTE with NLM_F_CREATE | NLM_F_REPLACE (idempotent).
    Add,
    /// RTM_DELROUTE.
    Delete,
}

/// Install (or remove) `dst/prefix` via interface `ifindex` in the main table, over rtnetlink.
pub fn route(op: RouteOp, ifindex: u32, dst: IpAddr, prefix: u8) -> io::Result<()> {
    let (family, addr): (u8, Vec<u8>) = match dst {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let (msg_type, flags) = match op {
        RouteOp::Add => (
            libc::RTM_NEWROUTE,
            libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE,
        ),
        RouteOp::Delete => (libc::RTM_DELROUTE, libc::NLM_F_REQUEST | libc::NLM_F_ACK),
    };
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched below
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&(flags as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: kernel assigns
    // struct rtmsg
    msg.push(family);
    msg.push(prefix); // rtm_dst_len
    msg.push(0); // rtm_src_len
    msg.push(0); // rtm_tos
    msg.push(libc::RT_TABLE_MAIN);
    msg.push(libc::RTPROT_STATIC);
    msg.push(libc::RT_SCOPE_LINK);
    msg.push(libc::RTN_UNICAST);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    // RTA_DST
    msg.extend_from_slice(&((4 + addr.len()) as u16).to_ne_bytes());
    msg.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    msg.extend_from_slice(&addr);
    // RTA_OIF
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&libc::RTA_OIF.to_ne_bytes());
    msg.extend_from_slice(&ifindex.to_ne_bytes());
    rtnl_request(&mut msg)
}

/// Sends one rtnetlink request (`msg`: an `nlmsghdr` whose length is patched here, then its
/// body) with NLM_F_ACK and reads the kernel's answer: Ok on a zero error code.
fn rtnl_request(msg: &mut [u8]) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    (&sock).write_all(msg)?;
    let mut reply = [0u8; 1024];
    let n = (&sock).read(&mut reply)?;
    // nlmsghdr (16) + nlmsgerr { error: i32, msg: nlmsghdr }
    if n >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if errno == 0 {
            return Ok(());
        }
        return Err(io::Error::from_raw_os_error(-errno));
    }
    Err(io::Error::other("unexpected rtnetlink reply"))
}

/// `IFLA_OPERSTATE` (linux/if_link.h; libc exports it for Android only).
const IFLA_OPERSTATE: u16 = 16;

/// RFC 2863 operational states a link may be set to from userspace (linux/if.h `IF_OPER_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    /// `IF_OPER_DORMANT`: up but waiting for an external event; not running.
    Dormant = libc::IF_OPER_DORMANT as isize,
    /// `IF_OPER_UP`.
    Up = libc::IF_OPER_UP as isize,
}

/// Sets the operational state of interface `ifindex` (RTM_NEWLINK with `IFLA_OPERSTATE`). The
/// kernel applies it and announces it at once (NETDEV_CHANGE: the FIB marks the link's routes
/// linkdown or live again; RTM_NEWLINK to listeners such as zebra), unlike a carrier change,
/// whose announcement waits for the link watcher (see `ifaces.rs`). It only moves between
/// UP/UNKNOWN and DORMANT; the link watcher later settles the state from the carrier.
pub fn set_operstate(ifindex: u32, state: OperState) -> io::Result<()> {
    let mut msg = Vec::with_capacity(48);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched by rtnl_request
    msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: kernel assigns
    // struct ifinfomsg: family, pad, type, index, flags, change (0: flags untouched)
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // IFLA_OPERSTATE: one byte, padded to 4.
    msg.extend_from_slice(&5u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_OPERSTATE.to_ne_bytes());
    msg.extend_from_slice(&[state as u8, 0, 0, 0]);
    rtnl_request(&mut msg)
}

/// The interface index of `name` (0 if unknown).
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::other("interface name has a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// Enter a new network namespace on this thread (tests only: sandboxing the TUN/route tests).
pub fn unshare_netns() -> io::Result<()> {
    // SAFETY: plain syscall; it only affects the calling thread's namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Move this thread into the network namespace at `path` (e.g. `/run/netns/NAME`). Tests use it
/// to reach a daemon's loopback-only endpoints inside a namespace they created.
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: `f` is an open namespace file for the duration of the call; setns only changes the
    // calling thread's namespace membership.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// TUN carrier

/// `TUNSETCARRIER` = `_IOW('T', 226, int)` (linux/if_tun.h, Linux 4.17+): turns the carrier of
/// the TUN behind the fd on or off, as a cable would.
const TUNSETCARRIER: libc::c_ulong = (1 << 30)
    | ((mem::size_of::<libc::c_int>() as libc::c_ulong) << 16)
    | ((b'T' as libc::c_ulong) << 8)
    | 226;
const _: () = assert!(TUNSETCARRIER == 0x4004_54e2);

/// Sets the carrier of the TUN whose queue `fd` is: the kernel reports the link as down
/// (`NO-CARRIER`, `/sys/class/net/IF/carrier` = 0) while it is off.
pub fn set_tun_carrier(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let value: libc::c_int = on.into();
    // SAFETY: TUNSETCARRIER reads one `int` through the pointer, which points at a live local;
    // the fd is borrowed, so it stays open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETCARRIER as _, &value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rtnetlink route notifications (drills measure routing convergence)

/// `SOL_NETLINK` / `NETLINK_ADD_MEMBERSHIP` (linux/netlink.h).
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
/// `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE` (linux/rtnetlink.h).
const ROUTE_GROUPS: [u32; 2] = [7, 11];

/// One route added, replaced or deleted in this namespace's routing tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteChange {
    /// RTM_DELROUTE (else RTM_NEWROUTE).
    pub deleted: bool,
    /// `rtm_protocol`: who installed it (2 kernel, 3 boot/`ip route`, 186 BGP, …).
    pub protocol: u8,
    /// `RTA_OIF`, when the message carries one.
    pub oif: Option<u32>,
}

/// A non-blocking netlink socket subscribed to the kernel's IPv4 and IPv6 route changes.
#[derive(Debug)]
pub struct RouteMonitor {
    sock: socket2::Socket,
}

impl RouteMonitor {
    /// Opens and subscribes the socket.
    pub fn new() -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(libc::NETLINK_ROUTE)),
        )?;
        sock.set_nonblocking(true)?;
        // A netlink socket receives multicast only once bound (port id 0: the kernel picks).
        // SAFETY: an all-zero `sockaddr_nl` is valid; only the family is set.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a live `sockaddr_nl` and the length passed is its size; the fd is
        // the socket's own.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        for group in ROUTE_GROUPS {
            // SAFETY: NETLINK_ADD_MEMBERSHIP reads one `u32` (the group number) through the
            // pointer, which points at a live local of that size; the fd is the socket's own.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    SOL_NETLINK,
                    NETLINK_ADD_MEMBERSHIP,
                    (&group as *const u32).cast(),
                    mem::size_of::<u32>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(RouteMonitor { sock })
    }

    /// Reads every queued notification without blocking and calls `f` for each route message.
    /// Malformed messages are skipped (they come from the kernel; nothing to count).
    pub fn drain(&self, buf: &mut [u8], mut f: impl FnMut(RouteChange)) {
        while let Ok(n) = (&self.sock).read(buf) {
            if n == 0 {
                return;
            }
            parse_route_messages(&buf[..n], &mut f);
        }
    }
}

/// Walks the `nlmsghdr`s of one datagram, reporting RTM_NEWROUTE / RTM_DELROUTE.
fn parse_route_messages(mut data: &[u8], f: &mut impl FnMut(RouteChange)) {
    const NLMSG_HDR: usize = 16;
    const RTMSG: usize = 12;
    let align = |n: usize| (n + 3) & !3;
    while data.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDR || len > data.len() {
            return;
        }
        let msg = &data[..len];
        if (kind == libc::RTM_NEWROUTE || kind == libc::RTM_DELROUTE) && len >= NLMSG_HDR + RTMSG {
            let protocol = msg[NLMSG_HDR + 5];
            let mut oif = None;
            let mut attrs = &msg[NLMSG_HDR + RTMSG..];
            while attrs.len() >= 4 {
                let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
                let atype = u16::from_ne_bytes([attrs[2], attrs[3]]);
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if atype == libc::RTA_OIF && alen >= 8 {
                    oif = Some(u32::from_ne_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
                }
                attrs = &attrs[align(alen).min(attrs.len())..];
            }
            f(RouteChange {
                deleted: kind == libc::RTM_DELROUTE,
                protocol,
                oif,
            });
        }
        data = &data[align(len).min(data.len())..];
    }
}

/// What a non-blocking `recvmmsg` returned: the messages read, or 0 when nothing was waiting
/// (EAGAIN) or a signal interrupted it; any other failure is the error.
fn received(rc: libc::c_int) -> io::Result<usize> {
    if rc >= 0 {
        return Ok(rc as usize);
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::{RouteChange, parse_route_messages};

    /// An RTM_NEWROUTE/RTM_DELROUTE for a route with `protocol` and an `RTA_OIF`.
    fn route_msg(kind: u16, protocol: u8, oif: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]); // flags, seq, pid
        m.extend_from_slice(&[libc::AF_INET as u8, 24, 0, 0, 254, protocol, 0, 1]);
        m.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&libc::RTA_OIF.to_ne_bytes());
        m.extend_from_slice(&oif.to_ne_bytes());
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn parse(data: &[u8]) -> Vec<RouteChange> {
        let mut out = Vec::new();
        parse_route_messages(data, &mut |c| out.push(c));
        out
    }

    #[test]
    fn route_notifications_give_kind_protocol_and_interface() {
        let mut two = route_msg(libc::RTM_NEWROUTE, 186, 7);
        two.extend(route_msg(libc::RTM_DELROUTE, 2, 9));
        assert_eq!(
            parse(&two),
            [
                RouteChange {
                    deleted: false,
                    protocol: 186,
                    oif: Some(7)
                },
                RouteChange {
                    deleted: true,
                    protocol: 2,
                    oif: Some(9)
                },
            ]
        );
    }

    #[test]
    fn truncated_or_lying_route_notifications_are_skipped_without_panic() {
        let m = route_msg(libc::RTM_NEWROUTE, 186, 7);
        for cut in 0..m.len() {
            let _ = parse(&m[..cut]);
        }
        let mut lying = m.clone();
        lying[..4].copy_from_slice(&1000u32.to_ne_bytes()); // longer than the datagram
        assert!(parse(&lying).is_empty());
        let mut bad_attr = m;
        bad_attr[28..30].copy_from_slice(&200u16.to_ne_bytes()); // attribute past the end
        assert_eq!(parse(&bad_attr)[0].oif, None);
    }
}
