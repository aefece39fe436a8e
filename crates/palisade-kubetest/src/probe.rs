//! Probing the lab until it shows what a test expects: bounded, never a fixed sleep.

use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use palisade_lab::{Lab, ProbeOutcome, ProbeRequest};
use palisade_model::{Key, Protocol};

use crate::error::{Error, Result};

/// One connection and whether it must succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub from: Key,
    pub to: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
}

impl Expectation {
    pub fn tcp(from: &Key, to: IpAddr, port: u16, allowed: bool) -> Self {
        Expectation {
            from: from.clone(),
            to,
            port,
            protocol: Protocol::Tcp,
            allowed,
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.allowed { "allowed" } else { "denied" };
        write!(
            f,
            "{} -> {} {}/{} {word}",
            self.from, self.to, self.port, self.protocol
        )
    }
}

/// How a [`probe_until`] went.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub rounds: usize,
    /// From the call to the start of the first round in which everything matched: by then
    /// the rules were in place (a denied probe takes its whole timeout to tell).
    pub matched_round_started: Duration,
    /// From the call to the end of that round.
    pub elapsed: Duration,
}

/// What [`probe_rounds`] found.
#[derive(Debug, Clone)]
pub struct Rounds {
    /// `Some` when a round matched every expectation.
    pub settled: Option<Settled>,
    pub rounds: usize,
    /// The last round's outcomes, in `expected` order.
    pub outcomes: Vec<ProbeOutcome>,
    /// Indices (into `expected`) that the last round got wrong; empty when settled.
    pub wrong: Vec<usize>,
    /// What the first round got wrong (cell index, outcome): why a re-probe was needed.
    pub first_round_wrong: Vec<(usize, ProbeOutcome)>,
}

impl Rounds {
    /// The wrong cells of the last round, one line each.
    pub fn describe_wrong(&self, expected: &[Expectation]) -> Vec<String> {
        self.wrong
            .iter()
            .map(|&i| format!("{}, got {}", expected[i], self.outcomes[i]))
            .collect()
    }

    /// Mismatch reports for the first `limit` wrong cells: each is probed once more, alone,
    /// and explained at once ([`palisade_lab::diagnose::explain_probe`]: the probe's timing,
    /// what `node_state` says of each node, conntrack, the flow's packets before and after
    /// the policy chains, the rulesets in force). A cell that comes out right this time says
    /// so: it was late, not wrong.
    pub fn explain_wrong(
        &self,
        lab: &Lab,
        expected: &[Expectation],
        probe_timeout: Duration,
        node_state: &dyn Fn(usize) -> String,
        limit: usize,
    ) -> Vec<String> {
        self.wrong
            .iter()
            .take(limit)
            .map(|&i| {
                let e = &expected[i];
                let request = ProbeRequest::new(e.from.clone(), e.to, e.port, e.protocol)
                    .with_timeout(probe_timeout);
                let (outcome, trace) = lab
                    .probe_many_traced(std::slice::from_ref(&request))
                    .remove(0);
                let verdict = if outcome.is_connected() == e.allowed {
                    "right when probed again for this report (late, not wrong)"
                } else {
                    "still wrong when probed again for this report"
                };
                format!(
                    "{e}: {verdict}\n{}",
                    palisade_lab::diagnose::explain_probe(
                        lab, &request, &outcome, &trace, node_state, true
                    )
                )
            })
            .collect()
    }
}

/// Probes every expectation (in parallel) in rounds until one round matches all of them,
/// at most `deadline` (a round started before it is finished). Each probe is bounded by
/// `probe_timeout`; a connection that does not connect in time counts as denied. An error
/// only when a probe could not be made at all.
pub fn probe_rounds(
    lab: &Lab,
    expected: &[Expectation],
    probe_timeout: Duration,
    deadline: Duration,
) -> Result<Rounds> {
    let requests: Vec<ProbeRequest> = expected
        .iter()
        .map(|e| {
            ProbeRequest::new(e.from.clone(), e.to, e.port, e.protocol).with_timeout(probe_timeout)
        })
        .collect();
    let started = Instant::now();
    let mut rounds = 0;
    let mut first_round_wrong = Vec::new();
    loop {
        rounds += 1;
        let round_started = started.elapsed();
        let outcomes = lab.probe_many(&requests);
        if let Some(error) = outcomes.iter().find_map(|o| match o {
            ProbeOutcome::Error(e) => Some(e.clone()),
            _ => None,
        }) {
            return Err(Error::other(format!("probe error: {error}")));
        }
        let wrong: Vec<usize> = expected
            .iter()
            .zip(&outcomes)
            .enumerate()
            .filter(|(_, (e, o))| e.allowed != o.is_connected())
            .map(|(i, _)| i)
            .collect();
        if rounds == 1 {
            first_round_wrong = wrong.iter().map(|&i| (i, outcomes[i].clone())).collect();
        }
        if wrong.is_empty() {
            let settled = Settled {
                rounds,
                matched_round_started: round_started,
                elapsed: started.elapsed(),
            };
            return Ok(Rounds {
                settled: Some(settled),
                rounds,
                outcomes,
                wrong,
                first_round_wrong,
            });
        }
        if started.elapsed() >= deadline {
            return Ok(Rounds {
                settled: None,
                rounds,
                outcomes,
                wrong,
                first_round_wrong,
            });
        }
        // A round of only connected probes is quick: do not spin.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`probe_rounds`], with an error listing the cells still wrong at the deadline.
pub fn probe_until(
    lab: &Lab,
    expected: &[Expectation],
    probe_timeout: Duration,
    deadline: Duration,
) -> Result<Settled> {
    let r = probe_rounds(lab, expected, probe_timeout, deadline)?;
    r.settled.ok_or_else(|| Error::Timeout {
        what: format!("{} probes as expected", expected.len()),
        after: deadline,
        detail: format!(
            "after {} rounds, still wrong:\n  {}",
            r.rounds,
            r.describe_wrong(expected).join("\n  ")
        ),
    })
}

/// Bound of one probe in [`time_flip`]: the resolution of a flip to allowed (a dropped SYN
/// is not retried within it, the next probe is a new connection).
pub const FLIP_PROBE_TIMEOUT: Duration = Duration::from_millis(25);

/// Measures when one connection flips to what `flip` expects: probes it back to back (each
/// bounded by [`FLIP_PROBE_TIMEOUT`]) and returns the time from the call to the end of the
/// first connected probe (a flip to allowed) or to the start of the first probe that did
/// not connect (a flip to denied: a still-allowed probe takes well under a millisecond).
/// At most `deadline`. Informational: confirm the whole state with [`probe_until`], since
/// on a loaded machine one slow connect could pass for a denial.
pub fn time_flip(lab: &Lab, flip: &Expectation, deadline: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let probe_started = started.elapsed();
        let outcome = lab.probe(
            &flip.from,
            flip.to,
            flip.port,
            flip.protocol,
            FLIP_PROBE_TIMEOUT,
        );
        if let ProbeOutcome::Error(e) = &outcome {
            return Err(Error::other(format!("probe error: {e}")));
        }
        match (flip.allowed, outcome.is_connected()) {
            (true, true) => return Ok(started.elapsed()),
            (false, false) => return Ok(probe_started),
            _ => {}
        }
        if started.elapsed() >= deadline {
            return Err(Error::Timeout {
                what: format!("{flip}"),
                after: deadline,
                detail: format!("last: {outcome}"),
            });
        }
    }
}

/// One flow a [`ContinuousProber`] keeps checking.
#[derive(Debug, Clone)]
pub struct FlowCheck {
    pub name: String,
    /// The source pod's netns (`Lab::pod_netns`).
    pub from_netns: String,
    pub to: SocketAddr,
    pub allowed: bool,
    /// Bound of each connection attempt. For an allowed flow make it generous: a loaded
    /// machine must not pass for a disruption.
    pub timeout: Duration,
}

/// What a [`ContinuousProber`] saw.
#[derive(Debug, Clone, Default)]
pub struct ProberReport {
    pub rounds: usize,
    /// `"<ms since start>: <flow>: expected ..., got ..."` for every attempt that differed.
    pub violations: Vec<String>,
}

/// Probes a set of flows over and over on its own thread (TCP connects made inside the
/// source pod's netns), until [`ContinuousProber::finish`] (or drop, or 10 minutes): to
/// show that enforcement holds *throughout* something, not only before and after.
#[derive(Debug)]
pub struct ContinuousProber {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    thread: Option<JoinHandle<ProberReport>>,
}

/// A continuous prober stops by itself after this long.
const PROBER_LIMIT: Duration = Duration::from_secs(600);

impl ContinuousProber {
    pub fn start(checks: Vec<FlowCheck>) -> Result<ContinuousProber> {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (thread_stop, thread_rounds) = (stop.clone(), rounds.clone());
        let thread = std::thread::Builder::new()
            .name("kubetest-prober".into())
            .spawn(move || {
                let started = Instant::now();
                let mut report = ProberReport::default();
                while !thread_stop.load(Ordering::SeqCst) && started.elapsed() < PROBER_LIMIT {
                    for check in &checks {
                        let at = started.elapsed().as_millis();
                        let connected = crate::netns::in_netns(&check.from_netns, || {
                            TcpStream::connect_timeout(&check.to, check.timeout)
                        });
                        let outcome = match connected {
                            Ok(Ok(_)) => Ok(true),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        if outcome
                            .as_ref()
                            .map_or(check.allowed, |c| *c != check.allowed)
                        {
                            let word = if check.allowed {
                                "connected"
                            } else {
                                "no connection"
                            };
                            let got = outcome.map_or_else(|e| e, |_| "connected".to_string());
                            report.violations.push(format!(
                                "{at} ms: {}: expected {word}, got {got}",
                                check.name
                            ));
                        }
                    }
                    report.rounds += 1;
                    thread_rounds.store(report.rounds, Ordering::SeqCst);
                }
                report
            })
            .map_err(|e| Error::other(format!("prober thread: {e}")))?;
        Ok(ContinuousProber {
            stop,
            rounds,
            thread: Some(thread),
        })
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Stops and returns what it saw.
    pub fn finish(mut self) -> ProberReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ContinuousProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Probes once and checks every expectation (no retry): for asserting that something
/// still holds, e.g. while the agent is down.
pub fn probe_now(lab: &Lab, expected: &[Expectation], probe_timeout: Duration) -> Result<()> {
    let requests: Vec<ProbeRequest> = expected
        .iter()
        .map(|e| {
            ProbeRequest::new(e.from.clone(), e.to, e.port, e.protocol).with_timeout(probe_timeout)
        })
        .collect();
    let outcomes = lab.probe_many(&requests);
    let wrong: Vec<String> = expected
        .iter()
        .zip(&outcomes)
        .filter(|(e, o)| e.allowed != o.is_connected())
        .map(|(e, o)| format!("{e}, got {o}"))
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Error::other(format!(
            "probes not as expected:\n  {}",
            wrong.join("\n  ")
        )))
    }
}
