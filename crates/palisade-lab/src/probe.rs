//! Probes: one connection attempt, bounded in time, made by a thread already inside the
//! source's netns. Nothing here enters a netns itself.
//!
//! Every probe must be a *new* flow, or the dataplane would judge an old one: conntrack
//! accepts packets of a known 5-tuple before any policy (DESIGN §12), and a UDP "flow" is
//! nothing but its 5-tuple. So UDP probes do not let the kernel pick their source port
//! (it picks at random, and over thousands of probes a denied probe eventually reuses the
//! tuple of an allowed one that conntrack still remembers): [`SourcePorts`] hands out
//! ports that no UDP probe of the same netns used within [`PORT_REUSE_AFTER`]. And a UDP
//! probe counts only a reply that echoes its own nonce, so a late answer to an earlier
//! datagram can never pass for this one. TCP needs neither: a SYN on a closed 5-tuple
//! starts a new conntrack entry, and a connection answers only its own handshake. But a TCP
//! probe closes with a reset ([`close_with_reset`]): an orderly close would leave its
//! 4-tuple in TIME_WAIT on the prober for 60 s, and a netns with few ephemeral ports (the
//! differential stress test gives each pod 16) would then fail to connect at all
//! (EADDRNOTAVAIL), which is the lab's failure, not the dataplane's.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_model::{Key, Protocol};

/// The default bound of one probe. Denied probes take exactly this long.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most probes [`crate::Lab::probe_many`] runs at once (one thread each). At least 81, so
/// a whole 9x9 matrix whose probes all time out still takes one timeout, not several.
pub const MAX_PARALLEL_PROBES: usize = 96;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeOutcome {
    /// TCP: connected and read the server's reply. UDP: the server answered.
    Connected,
    /// TCP reset, or ICMP port unreachable for UDP: nothing listens, or a rule rejected it.
    Refused,
    /// No answer within the timeout (a drop).
    TimedOut,
    /// ICMP host/network unreachable (e.g. a rule's `reject with icmp ...`, or no route).
    Unreachable,
    /// Not run, with the reason (SCTP).
    Skipped(String),
    /// Anything else, with what happened.
    Error(String),
}

impl ProbeOutcome {
    pub fn is_connected(&self) -> bool {
        matches!(self, ProbeOutcome::Connected)
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Connected => f.write_str("connected"),
            ProbeOutcome::Refused => f.write_str("refused"),
            ProbeOutcome::TimedOut => f.write_str("timed out"),
            ProbeOutcome::Unreachable => f.write_str("unreachable"),
            ProbeOutcome::Skipped(why) => write!(f, "skipped: {why}"),
            ProbeOutcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// One probe for [`crate::Lab::probe_many`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeRequest {
    pub from: Key,
    pub to: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub timeout: Duration,
}

impl ProbeRequest {
    /// With [`DEFAULT_PROBE_TIMEOUT`].
    pub fn new(from: Key, to: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            from,
            to,
            port,
            protocol,
            timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What one probe did and when, to explain an outcome that surprises (see
/// `crate::diagnose`). Instants are this process's monotonic clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ProbeTrace {
    /// The probe socket's own address: its port names the flow in conntrack and in the
    /// lab's flow counters. `None` when no socket got that far (e.g. a refused TCP connect).
    pub source: Option<SocketAddr>,
    pub started: Option<Instant>,
    /// Each datagram sent (UDP), or the start of the connect (TCP).
    pub sent: Vec<Instant>,
    /// When the reply that made the probe `Connected` arrived.
    pub reply: Option<Instant>,
    /// UDP: datagrams that came back without this probe's nonce (answers to something
    /// else), ignored.
    pub stray_replies: usize,
    pub finished: Option<Instant>,
}

/// A TCP connect and how long it took (for latency measurements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTiming {
    /// `Connected` as soon as the handshake completes (no reply is read).
    pub outcome: ProbeOutcome,
    pub elapsed: Duration,
}

/// Classifies the error of a connect, send or receive.
fn classify(e: &io::Error) -> ProbeOutcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => ProbeOutcome::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeOutcome::TimedOut,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ProbeOutcome::Unreachable
        }
        _ => ProbeOutcome::Error(e.to_string()),
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    // Socket timeouts of zero mean "forever": never hand one out.
    (left >= Duration::from_millis(1)).then_some(left)
}

/// The source ports of UDP probes: below the kernel's default ephemeral range
/// (32768-60999), so they never collide with a port the kernel picks for a TCP probe, and
/// above the ports test cases serve.
pub const UDP_SOURCE_PORTS: RangeInclusive<u16> = 10000..=32767;

/// A UDP probe's source port is used again (in the same netns) only after this long: more
/// than conntrack remembers a UDP flow (30 s, or 120 s once it has lasted 2 s).
pub const PORT_REUSE_AFTER: Duration = Duration::from_secs(150);

/// Hands out UDP source ports per netns, round-robin over [`UDP_SOURCE_PORTS`], each at
/// most once per [`PORT_REUSE_AFTER`].
#[derive(Debug, Default)]
pub(crate) struct SourcePorts {
    by_netns: Mutex<HashMap<String, PortCycle>>,
}

#[derive(Debug, Default)]
struct PortCycle {
    /// Offset into the range of the next candidate.
    next: u16,
    last_used: HashMap<u16, Instant>,
}

impl SourcePorts {
    /// A port no UDP probe of `netns` used within [`PORT_REUSE_AFTER`] before `now`, marked
    /// as used; `None` when all of them were (more than 22768 probes from one netns within
    /// that time).
    pub fn take(&self, netns: &str, now: Instant) -> Option<u16> {
        let mut all = self.by_netns.lock().unwrap_or_else(|p| p.into_inner());
        let cycle = all.entry(netns.to_string()).or_default();
        let (low, high) = (*UDP_SOURCE_PORTS.start(), *UDP_SOURCE_PORTS.end());
        let len = high - low + 1;
        for _ in 0..len {
            let port = low + cycle.next;
            cycle.next = (cycle.next + 1) % len;
            let fresh = cycle
                .last_used
                .get(&port)
                .is_none_or(|&t| now.saturating_duration_since(t) >= PORT_REUSE_AFTER);
            if fresh {
                cycle.last_used.insert(port, now);
                return Some(port);
            }
        }
        None
    }
}

/// Where a UDP probe gets its source port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortSource<'a> {
    pub ports: &'a SourcePorts,
    pub netns: &'a str,
}

/// Makes every UDP probe's payload unique, within and across labs of this process.
static NONCE: AtomicU64 = AtomicU64::new(0);

/// Runs one probe from the current thread's netns.
pub(crate) fn run(
    to: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
    source: PortSource<'_>,
) -> (ProbeOutcome, ProbeTrace) {
    let addr = SocketAddr::new(to, port);
    let mut trace = ProbeTrace {
        started: Some(Instant::now()),
        ..ProbeTrace::default()
    };
    let outcome = match protocol {
        Protocol::Tcp => tcp(addr, timeout, &mut trace),
        Protocol::Udp => udp(addr, timeout, source, &mut trace),
        Protocol::Sctp => ProbeOutcome::Skipped(crate::SCTP_SKIP_REASON.into()),
    };
    trace.finished = Some(Instant::now());
    (outcome, trace)
}

/// Connect, then read the server's reply; both within `timeout`.
fn tcp(addr: SocketAddr, timeout: Duration, trace: &mut ProbeTrace) -> ProbeOutcome {
    let deadline = Instant::now() + timeout;
    trace.sent.push(Instant::now());
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    trace.source = stream.local_addr().ok();
    let outcome = read_reply(&mut stream, deadline, trace);
    close_with_reset(stream);
    outcome
}

/// Reads the server's reply within `deadline`.
fn read_reply(stream: &mut TcpStream, deadline: Instant, trace: &mut ProbeTrace) -> ProbeOutcome {
    let mut buf = [0u8; 256];
    loop {
        let Some(left) = remaining(deadline) else {
            return ProbeOutcome::TimedOut;
        };
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return ProbeOutcome::Error(e.to_string());
        }
        match stream.read(&mut buf) {
            Ok(0) => return ProbeOutcome::Error("connected, but closed without a reply".into()),
            Ok(_) => {
                trace.reply = Some(Instant::now());
                return ProbeOutcome::Connected;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return classify(&e),
        }
    }
}

/// Closes a probe's connection with a reset (SO_LINGER 0), so its 4-tuple is free again at
/// once instead of waiting out TIME_WAIT on the prober (see the module doc). If the option
/// cannot be set, the close is an orderly one: the probe's outcome stands either way.
fn close_with_reset(stream: TcpStream) {
    let reset = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &reset);
    drop(stream);
}

/// How many ports a UDP probe tries when the one it got is taken (e.g. by a listener).
const BIND_ATTEMPTS: usize = 8;

/// Binds a UDP socket on a fresh source port (see [`SourcePorts`]) and connects it.
fn udp_socket(addr: SocketAddr, source: PortSource<'_>) -> io::Result<UdpSocket> {
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let Some(port) = source.ports.take(source.netns, Instant::now()) else {
            return Err(io::Error::other(format!(
                "no UDP source port left in {} unused for {PORT_REUSE_AFTER:?}",
                source.netns
            )));
        };
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
        };
        match UdpSocket::bind(local) {
            Ok(s) => return s.connect(addr).map(|()| s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no UDP source port")))
}

/// Send a datagram carrying a nonce; success iff a reply echoing that nonce arrives. Sent
/// twice (at 0 and at half the timeout) since a datagram may be lost, e.g. while a
/// neighbour entry resolves.
fn udp(
    addr: SocketAddr,
    timeout: Duration,
    source: PortSource<'_>,
    trace: &mut ProbeTrace,
) -> ProbeOutcome {
    let deadline = Instant::now() + timeout;
    let socket = match udp_socket(addr, source) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    trace.source = socket.local_addr().ok();
    let nonce = format!("{:016x}", NONCE.fetch_add(1, Ordering::Relaxed));
    let payload = format!("palisade-lab probe {nonce}\n");
    let mut buf = [0u8; 2048];
    for attempt in 0..2 {
        let wait_until = if attempt == 0 {
            Instant::now() + timeout / 2
        } else {
            deadline
        };
        // A thread descheduled past the deadline must not send late: that datagram would
        // also refresh the flow's conntrack entry into a long-lived "stream" one.
        if remaining(deadline).is_none() {
            break;
        }
        trace.sent.push(Instant::now());
        if let Err(e) = socket.send(payload.as_bytes()) {
            return classify(&e);
        }
        while let Some(left) = remaining(wait_until) {
            if let Err(e) = socket.set_read_timeout(Some(left)) {
                return ProbeOutcome::Error(e.to_string());
            }
            match socket.recv(&mut buf) {
                Ok(n) if echoes(&buf[..n], &nonce) => {
                    trace.reply = Some(Instant::now());
                    return ProbeOutcome::Connected;
                }
                Ok(_) => trace.stray_replies += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => match classify(&e) {
                    ProbeOutcome::TimedOut => break,
                    other => return other,
                },
            }
        }
    }
    ProbeOutcome::TimedOut
}

/// Whether a reply carries the probe's nonce (the server echoes the request).
fn echoes(reply: &[u8], nonce: &str) -> bool {
    reply.windows(nonce.len()).any(|w| w == nonce.as_bytes())
}

/// One TCP connect, timed; the connection is closed at once.
pub(crate) fn connect_once(addr: SocketAddr, timeout: Duration) -> ConnectTiming {
    let start = Instant::now();
    let outcome = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => {
            close_with_reset(stream);
            ProbeOutcome::Connected
        }
        Err(e) => classify(&e),
    };
    ConnectTiming {
        outcome,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_source_ports_are_not_reused_within_the_window() {
        let ports = SourcePorts::default();
        let t0 = Instant::now();
        let len = usize::from(UDP_SOURCE_PORTS.end() - UDP_SOURCE_PORTS.start()) + 1;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..len {
            let p = ports.take("palisade-x-p0", t0).expect("a fresh port");
            assert!(UDP_SOURCE_PORTS.contains(&p));
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        // Every port used just now: none until the window has passed.
        assert_eq!(
            ports.take("palisade-x-p0", t0 + Duration::from_secs(1)),
            None
        );
        // Another netns has its own ports (its own conntrack is elsewhere: the node's).
        assert!(ports.take("palisade-x-p1", t0).is_some());
        let later = t0 + PORT_REUSE_AFTER;
        assert_eq!(
            ports.take("palisade-x-p0", later),
            Some(*UDP_SOURCE_PORTS.start())
        );
    }

    #[test]
    fn a_reply_counts_only_with_the_probe_nonce() {
        assert!(echoes(
            b"palisade-lab x/a 80/UDP\npalisade-lab probe 00000000000000a1\n",
            "00000000000000a1"
        ));
        assert!(!echoes(
            b"palisade-lab x/a 80/UDP\npalisade-lab probe 00000000000000a0\n",
            "00000000000000a1"
        ));
        assert!(!echoes(b"palisade-lab x/a 80/UDP\n", "00000000000000a1"));
    }
}
