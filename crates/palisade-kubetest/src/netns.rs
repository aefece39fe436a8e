//! Sockets inside a lab namespace, for what the lab's probe server does not do: a
//! long-lived TCP connection that must survive an agent restart.
//!
//! A socket belongs to the network namespace of the thread that created it, whatever
//! thread uses it later. So each socket is created on a short-lived thread that entered the
//! namespace (setns on a thread the harness owns, never on a caller's), and then used from
//! anywhere.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use crate::error::{Context, Error, Result};

/// Runs `f` on a fresh thread inside the named network namespace (`/run/netns/<netns>`).
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new("/run/netns").join(netns);
    let file = File::open(&path).ctx(format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::other(format!("setns {netns}: {e}")))?;
            Ok(f())
        });
        worker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A TCP connection from a client pod to an echo server in a server pod, kept open across
/// whatever the test does meanwhile; [`EchoConnection::exchange`] checks it still carries
/// data both ways.
#[derive(Debug)]
pub struct EchoConnection {
    client: Option<TcpStream>,
    reader: BufReader<TcpStream>,
    server: Option<JoinHandle<()>>,
    exchanged: usize,
}

/// Longest an idle echo server thread lives (it ends at once when the client closes).
const SERVER_IDLE_LIMIT: Duration = Duration::from_secs(600);

impl EchoConnection {
    /// Listens on `server_addr` inside `server_netns`, connects from `client_netns`
    /// (within `timeout`) and exchanges a first line.
    pub fn open(
        server_netns: &str,
        server_addr: SocketAddr,
        client_netns: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let listener = in_netns(server_netns, || TcpListener::bind(server_addr))?.ctx(format!(
            "echo server: binding {server_addr} in {server_netns}"
        ))?;
        listener
            .set_nonblocking(true)
            .ctx("echo server: nonblocking")?;
        let server = std::thread::Builder::new()
            .name("kubetest-echo".into())
            .spawn(move || serve_one(&listener, timeout))
            .ctx("echo server: thread")?;
        let client = in_netns(client_netns, || {
            TcpStream::connect_timeout(&server_addr, timeout)
        })?
        .ctx(format!(
            "echo client: connecting to {server_addr} from {client_netns}"
        ))?;
        let reader = BufReader::new(client.try_clone().ctx("echo client: clone")?);
        let mut conn = EchoConnection {
            client: Some(client),
            reader,
            server: Some(server),
            exchanged: 0,
        };
        conn.exchange(timeout)?;
        Ok(conn)
    }

    /// Sends one line and reads it back, within `timeout`.
    pub fn exchange(&mut self, timeout: Duration) -> Result<()> {
        self.exchanged += 1;
        let line = format!("palisade-kubetest echo {}\n", self.exchanged);
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| Error::other("echo connection closed"))?;
        client
            .set_write_timeout(Some(timeout))
            .ctx("echo: write timeout")?;
        client.write_all(line.as_bytes()).ctx("echo: sending")?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .ctx("echo: read timeout")?;
        let mut back = String::new();
        self.reader
            .read_line(&mut back)
            .ctx("echo: reading the answer")?;
        if back != line {
            return Err(Error::other(format!("echo: sent {line:?}, got {back:?}")));
        }
        Ok(())
    }

    /// Lines exchanged so far.
    pub fn exchanged(&self) -> usize {
        self.exchanged
    }
}

impl Drop for EchoConnection {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// Accepts one connection (within `accept_timeout`) and echoes lines until it closes.
fn serve_one(listener: &TcpListener, accept_timeout: Duration) {
    let deadline = Instant::now() + accept_timeout;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(SERVER_IDLE_LIMIT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}
