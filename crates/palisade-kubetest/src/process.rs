//! Child processes (etcd, kube-apiserver, agents) that cannot outlive the test.
//!
//! Three layers, so nothing is left running whatever happens to the test:
//! - [`ChildProcess`]'s `Drop` sends SIGKILL and reaps the child (a panicking test unwinds
//!   through it).
//! - Every child is started under `setpriv --pdeathsig KILL` (util-linux) when `setpriv`
//!   exists: the kernel kills the child when its parent dies, so a test binary killed by
//!   SIGKILL or a timeout takes its etcd, API server and agents with it. Spawning needs no
//!   `unsafe` `pre_exec` this way.
//! - The parent death signal fires when the *thread* that forked the child exits, not the
//!   process. So every child is forked by one spawner thread that lives as long as the
//!   process (a test may call [`ChildProcess::spawn`] from a short-lived thread, e.g. a
//!   `spawn_blocking` worker that tokio retires after 10 s idle).
//!
//! Output (stdout and stderr) goes to a log file, which error messages quote the end of.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Context, Error, Result};

const SETPRIV: &str = "/usr/bin/setpriv";

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();

/// Forks `command` on the process-lifetime spawner thread (see the module docs).
fn spawn_on_spawner(command: Command) -> io::Result<Child> {
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kubetest-spawner".into())
            .spawn(move || {
                for mut request in rx {
                    let _ = request.reply.send(request.command.spawn());
                }
            })
            .expect("spawning the kubetest spawner thread");
        tx
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| io::Error::other("the spawner thread did not answer within 30 s"))?
}

/// A running child; killed and reaped on drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `program args`, appending its output to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx(format!("{name}: opening log {}", log.display()))?;
        let err = out
            .try_clone()
            .ctx(format!("{name}: log {}", log.display()))?;
        let mut command = if Path::new(SETPRIV).exists() {
            let mut c = Command::new(SETPRIV);
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        // NO_COLOR: plain logs (tracing's ANSI colours make them hard to read and grep).
        command
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child =
            spawn_on_spawner(command).ctx(format!("{name}: starting {}", program.display()))?;
        tracing::info!(name, pid = child.id(), log = %log.display(), "kubetest: started");
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// `Some(status)` once the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.try_status().is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, signal).map_err(|e| Error::other(format!("{}: kill -{signal}: {e}", self.name)))
    }

    /// Waits for the exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if still running after `grace`. Returns how it exited.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace) {
            return Ok(status);
        }
        tracing::warn!(name = %self.name, ?grace, "kubetest: no exit after SIGTERM; SIGKILL");
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_timeout(Duration::from_secs(10))
            .ok_or_else(|| Error::other(format!("{}: still running 10 s after SIGKILL", self.name)))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.try_status().is_none()
            && let Err(e) = self.kill()
        {
            eprintln!("palisade-kubetest: {e}");
        }
    }
}

/// The last `lines` lines of a file ("" if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
