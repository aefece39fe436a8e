//! Probes: one connection attempt, bounded in time, made by a thread already inside the
//! source's netns. Nothing here enters a netns itself.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
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

/// Runs one probe from the current thread's netns.
pub(crate) fn run(
    to: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> (ProbeOutcome, ProbeTrace) {
    let addr = SocketAddr::new(to, port);
    let mut trace = ProbeTrace {
        started: Some(Instant::now()),
        ..ProbeTrace::default()
    };
    let outcome = match protocol {
        Protocol::Tcp => tcp(addr, timeout, &mut trace),
        Protocol::Udp => udp(addr, timeout, &mut trace),
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

/// Send a datagram; success iff a reply arrives. Sent twice (at 0 and at half the timeout)
/// since a datagram may be lost, e.g. while a neighbour entry resolves.
fn udp(addr: SocketAddr, timeout: Duration, trace: &mut ProbeTrace) -> ProbeOutcome {
    let deadline = Instant::now() + timeout;
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match UdpSocket::bind(local).and_then(|s| s.connect(addr).map(|()| s)) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    trace.source = socket.local_addr().ok();
    let mut buf = [0u8; 256];
    for attempt in 0..2 {
        let wait_until = if attempt == 0 {
            Instant::now() + timeout / 2
        } else {
            deadline
        };
        trace.sent.push(Instant::now());
        if let Err(e) = socket.send(b"palisade-lab probe\n") {
            return classify(&e);
        }
        while let Some(left) = remaining(wait_until) {
            if let Err(e) = socket.set_read_timeout(Some(left)) {
                return ProbeOutcome::Error(e.to_string());
            }
            match socket.recv(&mut buf) {
                Ok(n) if n > 0 => {
                    trace.reply = Some(Instant::now());
                    return ProbeOutcome::Connected;
                }
                Ok(_) => {}
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

/// One TCP connect, timed; the connection is closed at once.
pub(crate) fn connect_once(addr: SocketAddr, timeout: Duration) -> ConnectTiming {
    let start = Instant::now();
    let outcome = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => ProbeOutcome::Connected,
        Err(e) => classify(&e),
    };
    ConnectTiming {
        outcome,
        elapsed: start.elapsed(),
    }
}
