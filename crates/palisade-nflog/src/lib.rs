//! # palisade-nflog
//!
//! The kernel seam of verdict events for netfilter backends: a netlink socket bound to one
//! NFLOG group (in a chosen network namespace) that turns each logged packet into a
//! [`KernelEvent`] (its [`EventTag`] from the log prefix, its addresses and ports from the
//! copied headers). Backends write the logging rules; this crate only reads.
//!
//! It must not interpret tags (that is [`palisade_ir::events::ReasonIndex`]) nor drop
//! anything but what is not Palisade's: packets logged with another prefix into the same
//! group are counted in [`NflogSource::foreign`] and skipped.

use std::fs::File;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, PacketNla, Timeout, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use palisade_ir::DataplaneError;
use palisade_ir::events::{EventSource, EventTag, KernelEvent, PacketSummary};

/// Bytes of each packet the kernel copies: enough for an IPv6 header and the ports.
const COPY_RANGE: u32 = 96;
/// The socket's receive buffer: a flood beyond it is lost (and counted by the kernel).
const RECEIVE_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("entering network namespace {netns}: {message}")]
    Netns { netns: String, message: String },
    #[error("NFLOG group {group}: {action}: {message}")]
    Socket {
        group: u16,
        action: &'static str,
        message: String,
    },
}

impl NflogError {
    fn socket(group: u16, action: &'static str, e: impl std::fmt::Display) -> NflogError {
        NflogError::Socket {
            group,
            action,
            message: e.to_string(),
        }
    }
}

/// One NFLOG group, read.
#[derive(Debug)]
pub struct NflogSource {
    socket: Socket,
    group: u16,
    buffer: Vec<u8>,
    foreign: u64,
    /// Receive-buffer overflows (ENOBUFS): each lost one or more reports.
    overflows: u64,
}

impl NflogSource {
    /// Binds `group` in `netns` (an `ip netns` name; `None`: this process's namespace). A
    /// group has one reader per namespace: binding fails if another socket holds it.
    pub fn open(netns: Option<&str>, group: u16) -> Result<NflogSource, NflogError> {
        let socket = match netns {
            None => Socket::new(NETLINK_NETFILTER)
                .map_err(|e| NflogError::socket(group, "socket", e))?,
            Some(ns) => socket_in(ns, group)?,
        };
        let mut source = NflogSource {
            socket,
            group,
            buffer: vec![0; 1 << 16],
            foreign: 0,
            overflows: 0,
        };
        source.bind()?;
        Ok(source)
    }

    fn bind(&mut self) -> Result<(), NflogError> {
        let group = self.group;
        self.socket
            .bind_auto()
            .map_err(|e| NflogError::socket(group, "bind", e))?;
        let _ = self.socket.set_rx_buf_sz(RECEIVE_BUFFER);
        // Deliver at once: events are read as they happen, not in batches.
        let flush: Timeout = Duration::from_millis(0).into();
        let request = config_request(
            NetfilterProtoFamily::Unspec,
            group,
            vec![
                ConfigCmd::Bind.into(),
                ConfigMode::new_packet(COPY_RANGE).into(),
                flush.into(),
            ],
        );
        let mut buf = vec![0; request.header.length as usize];
        request.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| NflogError::socket(group, "configure", e))?;
        let n = self
            .socket
            .recv(&mut &mut self.buffer[..], 0)
            .map_err(|e| NflogError::socket(group, "configure", e))?;
        let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buffer[..n])
            .map_err(|e| NflogError::socket(group, "configure", e))?;
        if let NetlinkPayload::Error(e) = reply.payload
            && e.code.is_some()
        {
            return Err(NflogError::socket(
                group,
                "bind (is another reader bound to this group?)",
                format!("{e:?}"),
            ));
        }
        Ok(())
    }

    /// Packets logged into this group by something else than Palisade (skipped).
    pub fn foreign(&self) -> u64 {
        self.foreign
    }

    fn receive(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, NflogError> {
        let group = self.group;
        let mut events = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let ready = {
                let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(n) => n > 0,
                    Err(nix::errno::Errno::EINTR) => false,
                    Err(e) => return Err(NflogError::socket(group, "poll", e)),
                }
            };
            if !ready {
                return Ok(events);
            }
            let n = match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(n) => n,
                // ENOBUFS: the kernel dropped reports for want of buffer; go on reading.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    self.overflows += 1;
                    continue;
                }
                Err(e) => return Err(NflogError::socket(group, "recv", e)),
            };
            let received = Instant::now();
            let mut offset = 0;
            while offset < n {
                let Ok(message) =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&self.buffer[offset..n])
                else {
                    break;
                };
                let len = message.header.length as usize;
                if let Some(event) = self.event_of(&message, received) {
                    events.push(event);
                }
                if len == 0 {
                    break;
                }
                offset += len.next_multiple_of(4);
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    fn event_of(
        &mut self,
        message: &NetlinkMessage<NetfilterMessage>,
        received: Instant,
    ) -> Option<KernelEvent> {
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
            ..
        }) = &message.payload
        else {
            return None;
        };
        let mut tag = None;
        let mut packet = None;
        for nla in nlas {
            match nla {
                PacketNla::Prefix(prefix) => tag = prefix.to_str().ok()?.parse::<EventTag>().ok(),
                PacketNla::Payload(bytes) => packet = PacketSummary::parse(bytes),
                _ => {}
            }
        }
        match (tag, packet) {
            (Some(tag), Some(packet)) => Some(KernelEvent {
                tag,
                packet,
                received,
            }),
            _ => {
                self.foreign += 1;
                None
            }
        }
    }
}

impl EventSource for NflogSource {
    fn recv(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, DataplaneError> {
        self.receive(timeout).map_err(|e| DataplaneError::Apply {
            backend: "nflog",
            action: "reading verdict events".into(),
            message: e.to_string(),
        })
    }
    fn lost(&self) -> u64 {
        self.overflows
    }
}

/// A netlink socket created inside `netns` (a socket belongs to the namespace it was
/// created in), by a thread that enters it and ends.
fn socket_in(netns: &str, group: u16) -> Result<Socket, NflogError> {
    let path = format!("/run/netns/{netns}");
    let enter = |e: String| NflogError::Netns {
        netns: netns.to_string(),
        message: e,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).map_err(|e| enter(format!("open {path}: {e}")))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| enter(format!("setns: {e}")))?;
            Socket::new(NETLINK_NETFILTER).map_err(|e| NflogError::socket(group, "socket", e))
        })
        .join()
        .unwrap_or_else(|_| Err(enter("the thread entering it panicked".into())))
    })
}
