//! The probe server: one thread of the process that owns the lab serves every listener of
//! every pod. Sockets are created by a short-lived thread inside the pod's netns (a socket
//! stays in the netns it was created in), then handed to the serving thread, which polls
//! them all. TCP: accept, write the reply, close. UDP: answer every datagram with the reply
//! followed by the datagram itself.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use palisade_model::Protocol;

use crate::LabError;

/// How long `serve` waits for the serving thread to take a change.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// One bound, non-blocking socket of one pod.
#[derive(Debug)]
pub(crate) struct Listener {
    pub pod: usize,
    pub port: u16,
    pub protocol: Protocol,
    pub sock: Sock,
    pub reply: Vec<u8>,
}

impl Listener {
    /// Binds `ip:port` (call from a thread inside the pod's netns).
    pub fn bind(
        pod: usize,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
        reply: Vec<u8>,
    ) -> io::Result<Self> {
        let addr = SocketAddr::new(ip, port);
        let sock = match protocol {
            // std sets SO_REUSEADDR on listeners: re-serving a port with TIME_WAIT left works.
            Protocol::Tcp => Sock::Tcp(TcpListener::bind(addr)?),
            Protocol::Udp => Sock::Udp(UdpSocket::bind(addr)?),
            Protocol::Sctp => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    crate::SCTP_SKIP_REASON,
                ));
            }
        };
        match &sock {
            Sock::Tcp(s) => s.set_nonblocking(true)?,
            Sock::Udp(s) => s.set_nonblocking(true)?,
        }
        Ok(Self {
            pod,
            port,
            protocol,
            sock,
            reply,
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.sock {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Udp(s) => s.as_fd(),
        }
    }

    /// Serves whatever is pending, without blocking.
    fn handle(&self) {
        match &self.sock {
            Sock::Tcp(listener) => loop {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        // Accepted sockets are blocking; the reply is tiny, the bound is a guard.
                        let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                        let _ = stream.write_all(&self.reply);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(port = self.port, error = %e, "lab server: accept");
                        break;
                    }
                }
            },
            Sock::Udp(socket) => {
                let mut buf = [0u8; 2048];
                loop {
                    match socket.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            // The reply echoes the request: a probe counts only the answer
                            // to its own datagram (it carries a nonce).
                            let mut reply = self.reply.clone();
                            reply.extend_from_slice(&buf[..n]);
                            let _ = socket.send_to(&reply, peer);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // ICMP errors from earlier replies surface here; keep serving.
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

enum Cmd {
    Add(Vec<Listener>, Sender<()>),
    Remove {
        pod: usize,
        ports: Vec<(u16, Protocol)>,
        done: Sender<()>,
    },
    Stop,
}

/// Handle on the serving thread; dropping it stops the thread and closes every socket.
#[derive(Debug)]
pub(crate) struct ProbeServer {
    tx: Sender<Cmd>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Add(l, _) => write!(f, "Add({} listeners)", l.len()),
            Cmd::Remove { pod, ports, .. } => write!(f, "Remove(pod {pod}, {ports:?})"),
            Cmd::Stop => f.write_str("Stop"),
        }
    }
}

impl ProbeServer {
    pub fn start() -> Result<Self, LabError> {
        let io_err = |context: &str| {
            let context = context.to_string();
            move |source| LabError::Io { context, source }
        };
        let (wake, wake_rx) = UnixStream::pair().map_err(io_err("probe server: socketpair"))?;
        wake_rx
            .set_nonblocking(true)
            .map_err(io_err("probe server: socketpair"))?;
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("palisade-lab-server".into())
            .spawn(move || serve_loop(&rx, &wake_rx))
            .map_err(io_err("probe server: spawn"))?;
        Ok(Self {
            tx,
            wake,
            thread: Some(thread),
        })
    }

    fn request(&self, cmd: Cmd, done: &Receiver<()>) -> Result<(), LabError> {
        let gone = || LabError::Server("the serving thread is gone".into());
        self.tx.send(cmd).map_err(|_| gone())?;
        let _ = (&self.wake).write(&[1]);
        done.recv_timeout(ACK_TIMEOUT).map_err(|_| gone())
    }

    pub fn add(&self, listeners: Vec<Listener>) -> Result<(), LabError> {
        if listeners.is_empty() {
            return Ok(());
        }
        let (done, wait) = mpsc::channel();
        self.request(Cmd::Add(listeners, done), &wait)
    }

    /// Closes the pod's sockets on these ports; returns once they are closed.
    pub fn remove(&self, pod: usize, ports: Vec<(u16, Protocol)>) -> Result<(), LabError> {
        if ports.is_empty() {
            return Ok(());
        }
        let (done, wait) = mpsc::channel();
        self.request(Cmd::Remove { pod, ports, done }, &wait)
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        let _ = (&self.wake).write(&[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_loop(rx: &Receiver<Cmd>, wake: &UnixStream) {
    let mut listeners: Vec<Listener> = Vec::new();
    loop {
        let mut ready = Vec::new();
        {
            let mut fds = Vec::with_capacity(listeners.len() + 1);
            fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
            fds.extend(
                listeners
                    .iter()
                    .map(|l| PollFd::new(l.fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::from(500u16)) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "lab server: poll");
                    thread::sleep(Duration::from_millis(20));
                }
            }
            for (i, fd) in fds.iter().enumerate().skip(1) {
                if fd.any().unwrap_or(true) {
                    ready.push(i - 1);
                }
            }
        }
        for i in ready {
            listeners[i].handle();
        }
        let mut drain = [0u8; 64];
        while matches!((&*wake).read(&mut drain), Ok(n) if n > 0) {}
        loop {
            match rx.try_recv() {
                Ok(Cmd::Add(new, done)) => {
                    listeners.extend(new);
                    let _ = done.send(());
                }
                Ok(Cmd::Remove { pod, ports, done }) => {
                    listeners.retain(|l| !(l.pod == pod && ports.contains(&(l.port, l.protocol))));
                    let _ = done.send(());
                }
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
    }
}
