//! [`TcpProxy`]: a loopback TCP proxy whose connections a test can cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{Context, Error, Result};

#[derive(Debug, Default)]
struct Shared {
    cut: AtomicBool,
    live: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// A TCP proxy on 127.0.0.1 in front of one upstream (the API server), for simulating a
/// network failure between the agent and the API server.
///
/// [`cut`](TcpProxy::cut) resets every live connection (RST, as a dead middlebox or a
/// pulled cable followed by a timeout would look to the agent) and from then on resets every
/// new one right after accepting it; [`restore`](TcpProxy::restore) lets connections through
/// again. The listener stays bound throughout, so the port cannot be taken by anyone else
/// between cut and restore, and clients see a failed connection at once rather than waiting
/// for a timeout.
///
/// Runs on its own thread with its own single-threaded tokio runtime: it works the same
/// whether the test is async or not, and cannot be starved by a test blocking its runtime.
/// TLS passes through untouched (it is plain TCP to the proxy).
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// Bumped by `cut`: every connection task watches it.
    generation: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").ctx("proxy: binding 127.0.0.1:0")?;
        std_listener
            .set_nonblocking(true)
            .ctx("proxy: nonblocking")?;
        let addr = std_listener.local_addr().ctx("proxy: local_addr")?;
        let shared = Arc::new(Shared::default());
        let (generation, generation_rx) = watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kubetest-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("palisade-kubetest: proxy runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("palisade-kubetest: proxy listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = accept_loop(listener, upstream, task_shared, generation_rx) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task and its sockets.
            })
            .ctx("proxy: spawning its thread")?;
        tracing::info!(%addr, %upstream, "kubetest: proxy started");
        Ok(TcpProxy {
            addr,
            upstream,
            shared,
            generation,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Resets every live connection and every new one until [`TcpProxy::restore`]. Returns
    /// once no connection is live any more (bounded: 5 s).
    pub fn cut(&self) -> Result<()> {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.live_connections() > 0 {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "proxy cut".into(),
                    after: Duration::from_secs(5),
                    detail: format!("{} connections still live", self.live_connections()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(addr = %self.addr, "kubetest: proxy cut");
        Ok(())
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
        tracing::info!(addr = %self.addr, "kubetest: proxy restored");
    }

    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections being forwarded now.
    pub fn live_connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections reset on arrival while cut.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Closes with RST rather than FIN: the peer sees "connection reset", as after a failure.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    generation: watch::Receiver<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Read the generation before the flag: `cut` sets the flag before bumping the
        // generation, so a connection let through here always sees the next bump.
        let seen = *generation.borrow();
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            reset(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.live.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let mut generation = generation.clone();
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await;
            if let Ok(Ok(mut server)) = connected {
                let mut client = client;
                let cut = tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                    _ = generation.wait_for(|g| *g != seen) => true,
                };
                if cut {
                    reset(client);
                    reset(server);
                }
            } else {
                reset(client);
            }
            shared.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
