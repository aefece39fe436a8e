//! [`Agent`]: the real `palisade agent` process, one per lab node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::binaries::palisade_binary;
use crate::control_plane::free_addr;
use crate::error::{Error, Result};
use crate::http;
use crate::process::ChildProcess;

/// How an agent is started.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// `--node`: the agent enforces the pods with this `spec.nodeName`.
    pub node: String,
    pub kubeconfig: PathBuf,
    /// `--netns`: the lab node's namespace the rules go into.
    pub netns: Option<String>,
    /// `--listen` for /healthz, /readyz, /metrics (a free loopback port by default).
    pub listen: SocketAddr,
    /// `--max-backoff-ms`: 1000 here, so a test does not wait 5 s for a retry.
    pub max_backoff_ms: u64,
    pub cleanup_on_exit: bool,
    /// `--table` (default: the agent's own default, `palisade`).
    pub table: Option<String>,
    pub extra_args: Vec<String>,
    /// The log (stderr of every run of this agent, appended) is written here.
    pub log: PathBuf,
}

impl AgentSpec {
    pub fn new(
        node: &str,
        kubeconfig: &Path,
        netns: Option<&str>,
        log_dir: &Path,
    ) -> Result<AgentSpec> {
        let listen = free_addr()?;
        Ok(AgentSpec {
            node: node.to_string(),
            kubeconfig: kubeconfig.to_path_buf(),
            netns: netns.map(str::to_string),
            listen,
            max_backoff_ms: 1000,
            cleanup_on_exit: false,
            table: None,
            extra_args: Vec::new(),
            log: log_dir.join(format!("agent-{node}-{}.log", listen.port())),
        })
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "agent".to_string(),
            format!("--node={}", self.node),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--listen={}", self.listen),
            format!("--max-backoff-ms={}", self.max_backoff_ms),
        ];
        if let Some(ns) = &self.netns {
            args.push(format!("--netns={ns}"));
        }
        if let Some(table) = &self.table {
            args.push(format!("--table={table}"));
        }
        if self.cleanup_on_exit {
            args.push("--cleanup-on-exit".into());
        }
        // `PALISADE_E2E_BACKEND=ebpf` runs the end-to-end tests against another dataplane.
        if let Ok(backend) = std::env::var("PALISADE_E2E_BACKEND") {
            args.push(format!("--backend={backend}"));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The metrics text of an agent, with lookups.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name` whose labels include every `labels` pair.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_text) = match series.split_once('{') {
                    Some((m, rest)) => (m, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                if metric != name {
                    return None;
                }
                let all = labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
                if !all {
                    return None;
                }
                value.parse().ok()
            })
    }

    /// Events applied so far: the count of the event-to-applied histogram (every watch event
    /// is observed there once its batch is in the kernel, or found to change nothing).
    pub fn events_applied(&self) -> u64 {
        self.value("palisade_event_to_applied_seconds_count", &[])
            .unwrap_or(0.0) as u64
    }

    /// Mean event-to-applied time so far.
    pub fn mean_event_to_applied(&self) -> Option<Duration> {
        let sum = self.value("palisade_event_to_applied_seconds_sum", &[])?;
        let count = self.value("palisade_event_to_applied_seconds_count", &[])?;
        (count > 0.0).then(|| Duration::from_secs_f64(sum / count))
    }

    pub fn watch_restarts(&self, kind: &str) -> u64 {
        self.value("palisade_watch_restarts_total", &[("kind", kind)])
            .unwrap_or(0.0) as u64
    }

    pub fn applies(&self) -> u64 {
        self.value("palisade_applies_total", &[]).unwrap_or(0.0) as u64
    }
}

/// A running `palisade agent`, killed on drop. Its output goes to `spec.log`.
///
/// It runs in the host's network namespace and applies its rules in the lab node's
/// (`--netns`), so it reaches the API server on 127.0.0.1 like a hostNetwork pod reaches
/// its node-local API endpoint, while the rules still see exactly that node's pod traffic.
#[derive(Debug)]
pub struct Agent {
    spec: AgentSpec,
    binary: PathBuf,
    process: Option<ChildProcess>,
    starts: usize,
    /// (events applied, ledger) when the last baseline was taken; see [`Agent::set_baseline`].
    baseline: (u64, u64),
}

impl Agent {
    /// Starts the agent (the `palisade` binary, built if needed: see
    /// [`crate::palisade_binary`]).
    pub fn spawn(spec: AgentSpec) -> Result<Agent> {
        let binary = palisade_binary()?;
        let mut agent = Agent {
            spec,
            binary,
            process: None,
            starts: 0,
            baseline: (0, 0),
        };
        agent.start()?;
        Ok(agent)
    }

    /// Starts it again after [`Agent::kill`] or [`Agent::terminate`] (same flags, same
    /// listen address).
    pub fn start(&mut self) -> Result<()> {
        if self.process.as_mut().is_some_and(ChildProcess::is_running) {
            return Err(Error::other(format!(
                "agent {} is already running",
                self.spec.node
            )));
        }
        self.starts += 1;
        let name = format!("agent-{}", self.spec.node);
        let process = ChildProcess::spawn(&name, &self.binary, &self.spec.args(), &self.spec.log)?;
        self.process = Some(process);
        Ok(())
    }

    pub fn spec(&self) -> &AgentSpec {
        &self.spec
    }

    pub fn node(&self) -> &str {
        &self.spec.node
    }

    pub fn listen(&self) -> SocketAddr {
        self.spec.listen
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// SIGKILL: no chance to clean up, as after an OOM kill or a node crash.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let process = self
            .process
            .as_mut()
            .ok_or_else(|| Error::other("agent not started"))?;
        process.kill()
    }

    /// SIGTERM and wait for the exit (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let process = self
            .process
            .as_mut()
            .ok_or_else(|| Error::other("agent not started"))?;
        process.terminate(grace)
    }

    /// The whole log of every run so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.spec.log).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.spec.log, lines)
    }

    /// GET /readyz.
    pub fn readyz(&self) -> Result<http::Response> {
        http::get(self.spec.listen, "/readyz", Duration::from_secs(2))
    }

    pub fn is_ready(&self) -> bool {
        self.readyz().is_ok_and(|r| r.status == 200)
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let r = http::get(self.spec.listen, "/metrics", Duration::from_secs(2))?;
        if r.status != 200 {
            return Err(Error::other(format!(
                "agent {}: /metrics: HTTP {}",
                self.spec.node, r.status
            )));
        }
        Ok(Metrics(r.body))
    }

    fn exited(&mut self) -> Option<String> {
        let process = self.process.as_mut()?;
        process.try_status().map(|status| {
            format!(
                "agent {} exited ({status}):\n{}",
                self.spec.node,
                process.log_tail(30)
            )
        })
    }

    /// Polls /readyz until 200 (every 50 ms, at most `timeout`). Returns how long it took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let last = match self.readyz() {
                Ok(r) if r.status == 200 => return Ok(started.elapsed()),
                Ok(r) => format!("HTTP {}: {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            if let Some(why) = self.exited() {
                return Err(Error::other(why));
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!("agent {} /readyz 200", self.spec.node),
                    after: timeout,
                    detail: format!("last: {last}\n{}", self.log_tail(20)),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls /readyz until it answers, but not 200 (the HTTP server runs, the agent says
    /// it is not ready). Returns the reason it gives.
    pub async fn wait_not_ready(&mut self, timeout: Duration) -> Result<String> {
        let started = Instant::now();
        loop {
            let last = match self.readyz() {
                Ok(r) if r.status != 200 => return Ok(r.body.trim().to_string()),
                Ok(r) => format!("HTTP {}", r.status),
                Err(e) => e.to_string(),
            };
            if let Some(why) = self.exited() {
                return Err(Error::other(why));
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!("agent {} /readyz not ready", self.spec.node),
                    after: timeout,
                    detail: format!("last: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records "the agent has applied every event up to `ledger`" as of now. Take it only
    /// when that is true: right after the agent became ready with no write in flight, or
    /// after [`Agent::wait_caught_up`].
    pub fn set_baseline(&mut self, ledger: u64) -> Result<()> {
        self.baseline = (self.metrics()?.events_applied(), ledger);
        Ok(())
    }

    /// Waits until the agent has applied as many events since the baseline as the ledger
    /// grew: every write made so far is in its rules (polled every 20 ms, at most
    /// `timeout`). A re-list after a watch failure adds events, so after one this is only a
    /// lower bound: probe as well.
    pub async fn wait_caught_up(&mut self, ledger: u64, timeout: Duration) -> Result<()> {
        let (base_events, base_ledger) = self.baseline;
        let target = base_events + ledger.saturating_sub(base_ledger);
        let started = Instant::now();
        loop {
            let seen = self.metrics().map(|m| m.events_applied());
            if let Ok(n) = seen
                && n >= target
            {
                return Ok(());
            }
            if let Some(why) = self.exited() {
                return Err(Error::other(why));
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!("agent {}: {target} events applied", self.spec.node),
                    after: timeout,
                    detail: format!("seen {seen:?}\n{}", self.log_tail(10)),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
