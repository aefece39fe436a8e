//! Enforcement in the lab: one dataplane per lab node, fed with the IR the engine compiles
//! for that node, and a conformance [`Prober`] that measures reachability with real
//! packets. The backend is chosen by the caller; this module knows none.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_conformance::{Case, Observed, Probe, Prober, RunContext};
use palisade_engine::ClusterState;
use palisade_ir::{
    ApplyReport, Dataplane, DataplaneError, NodeRuleset, Reconciled, Reconciler, ReconcilerConfig,
};
use palisade_model::{IpFamily, Key, Protocol};

use crate::diagnose;
use crate::{Lab, ProbeOutcome, ProbeRequest, ProbeTrace, SCTP_SKIP_REASON};

/// Conntrack entries of a report besides the probe's own 5-tuple.
/// One probe as it ran: what was asked, what came of it, and its trace.
pub type MeasuredProbe = (ProbeRequest, ProbeOutcome, ProbeTrace);

/// The lab's nodes, each with its dataplane driven by the shared [`Reconciler`].
pub struct Enforcer<'a> {
    lab: &'a Lab,
    nodes: Vec<Reconciler>,
}

/// When a node's last apply completed, and which one it was (from its reconciler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyMark {
    /// 1 for the first apply of this enforcer, then one more for each that changed something.
    pub generation: u64,
    pub completed: Instant,
}

impl std::fmt::Debug for Enforcer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("lab", &self.lab.prefix())
            .finish_non_exhaustive()
    }
}

impl<'a> Enforcer<'a> {
    /// `dataplane_for(i)` builds the dataplane of node `i` (e.g. nft inside its netns).
    /// The lab applies every step itself, so no periodic resync runs behind its back.
    pub fn new(lab: &'a Lab, mut dataplane_for: impl FnMut(usize) -> Box<dyn Dataplane>) -> Self {
        let nodes = (0..lab.node_count())
            .map(|i| Reconciler::new(dataplane_for(i), ReconcilerConfig { resync_every: None }))
            .collect();
        Enforcer { lab, nodes }
    }

    /// Node `i`'s reconciler: what it applied, its generation, when it last applied.
    pub fn node(&self, i: usize) -> &Reconciler {
        &self.nodes[i]
    }

    pub fn lab(&self) -> &Lab {
        self.lab
    }

    /// Compiles every node and moves its dataplane there (full the first time, then
    /// incremental). Returns each node's ruleset and apply report.
    pub fn enforce(
        &mut self,
        state: &ClusterState,
    ) -> Result<Vec<(NodeRuleset, ApplyReport)>, DataplaneError> {
        let mut out = Vec::new();
        for (i, node) in self.lab.node_names().iter().enumerate() {
            let desired = state.compile_node(node);
            let report = match self.nodes[i].reconcile(desired.clone())? {
                Reconciled::Applied { report, .. } => report,
                Reconciled::Unchanged => ApplyReport::default(),
            };
            out.push((desired, report));
        }
        Ok(out)
    }

    /// The ruleset node `i` last applied (what is in force).
    pub fn applied(&self, i: usize) -> Option<&NodeRuleset> {
        self.nodes.get(i)?.applied()
    }

    /// Node `i`'s last completed apply.
    pub fn last_apply(&self, i: usize) -> Option<ApplyMark> {
        let node = self.nodes.get(i)?;
        Some(ApplyMark {
            generation: node.generation(),
            completed: node.last_apply_completed()?,
        })
    }

    /// Node `i`'s verdict events (its backend must have been built with them on).
    pub fn events(
        &mut self,
        i: usize,
    ) -> Result<Box<dyn palisade_ir::events::EventSource>, DataplaneError> {
        self.nodes[i].events()
    }

    /// Node `i`'s packet counters.
    pub fn counters(&mut self, i: usize) -> Result<palisade_ir::Counters, DataplaneError> {
        self.nodes[i].counters()
    }

    /// Removes every node's rules.
    pub fn remove(&mut self) -> Result<(), DataplaneError> {
        self.nodes.iter_mut().try_for_each(Reconciler::remove)
    }

    /// Probes `src -> dst` for every pair (a pod to itself included) and returns
    /// `observed[src][dst]`.
    pub fn measure(
        &self,
        pods: &[Key],
        family: IpFamily,
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<Vec<Vec<Observed>>, String> {
        self.measure_traced(pods, family, port, protocol, timeout)
            .map(|(cells, _)| cells)
    }

    /// [`Enforcer::measure`], also returning every probe as it ran (row-major, `src * n +
    /// dst`), to explain a cell with [`Enforcer::explain_probe`].
    pub fn measure_traced(
        &self,
        pods: &[Key],
        family: IpFamily,
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<(Vec<Vec<Observed>>, Vec<MeasuredProbe>), String> {
        let mut requests = Vec::new();
        for src in pods {
            for dst in pods {
                let to = self
                    .lab
                    .pod_ip(dst, family)
                    .ok_or_else(|| format!("lab pod {dst} has no {family} address"))?;
                requests
                    .push(ProbeRequest::new(src.clone(), to, port, protocol).with_timeout(timeout));
            }
        }
        let outcomes = self.lab.probe_many_traced(&requests);
        let cells: Vec<Observed> = outcomes
            .iter()
            .map(|(o, _)| match o {
                ProbeOutcome::Connected => Observed::Allowed,
                ProbeOutcome::Skipped(reason) => Observed::Skipped(reason.clone()),
                // Dropped packets time out; a refusal or error is a failed connection too.
                _ => Observed::Denied,
            })
            .collect();
        let grid = cells.chunks(pods.len()).map(<[Observed]>::to_vec).collect();
        let measured = requests
            .into_iter()
            .zip(outcomes)
            .map(|(r, (o, t))| (r, o, t))
            .collect();
        Ok((grid, measured))
    }

    /// Everything the lab can tell about one probe that just ran, for a report
    /// ([`diagnose::explain_probe`]), with each node's applied ruleset: its generation and
    /// when that apply completed. Call it right after the probe, before anything changes.
    pub fn explain_probe(
        &self,
        request: &ProbeRequest,
        outcome: &ProbeOutcome,
        trace: &ProbeTrace,
        rulesets: bool,
    ) -> String {
        let epoch = self.lab.epoch();
        let at = |t: Instant| format!("+{:.3}s", t.saturating_duration_since(epoch).as_secs_f64());
        let applied = |i: usize| match (self.applied(i), self.last_apply(i)) {
            (Some(rs), Some(mark)) => {
                let st = rs.stats();
                let relative = match trace.started {
                    Some(start) if mark.completed <= start => format!(
                        "{} ms before the probe started",
                        (start - mark.completed).as_millis()
                    ),
                    Some(start) => format!(
                        "{} ms AFTER the probe started",
                        (mark.completed - start).as_millis()
                    ),
                    None => String::new(),
                };
                format!(
                    "generation {} ({} endpoints, {} rules, {} peer sets, {} port sets), apply completed {} ({relative})",
                    mark.generation,
                    st.endpoints,
                    st.rules,
                    st.peer_sets,
                    st.port_sets,
                    at(mark.completed)
                )
            }
            _ => "nothing applied".to_string(),
        };
        diagnose::explain_probe(self.lab, request, outcome, trace, &applied, rulesets)
    }

    /// The model pods' node names, for the conformance runner.
    pub fn node_of_pods(&self, pods: &[Key]) -> BTreeMap<Key, String> {
        pods.iter()
            .filter_map(|k| {
                self.lab
                    .pod_node(k)
                    .map(|n| (k.clone(), self.lab.node_names()[n].clone()))
            })
            .collect()
    }

    pub fn addresses(&self, pods: &[Key], family: IpFamily) -> BTreeMap<Key, IpAddr> {
        pods.iter()
            .filter_map(|k| self.lab.pod_ip(k, family).map(|ip| (k.clone(), ip)))
            .collect()
    }
}

/// Conformance with real packets: each step is enforced on every node, then probed.
pub struct LabProber<'a> {
    pub enforcer: Enforcer<'a>,
    pub timeout: Duration,
    serving_case: Option<String>,
    /// The last probed matrix, row-major, to explain its failing cells.
    last: Vec<MeasuredProbe>,
    /// `Some(why)` once installing the flow counters failed (reports say so).
    counters: Option<Result<(), String>>,
}

impl std::fmt::Debug for LabProber<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabProber")
            .field("enforcer", &self.enforcer)
            .finish_non_exhaustive()
    }
}

impl<'a> LabProber<'a> {
    pub fn new(enforcer: Enforcer<'a>, timeout: Duration) -> Self {
        LabProber {
            enforcer,
            timeout,
            serving_case: None,
            last: Vec::new(),
            counters: None,
        }
    }
}

impl Prober for LabProber<'_> {
    fn prepare(
        &mut self,
        ctx: &RunContext<'_>,
        case: &Case,
        state: &ClusterState,
    ) -> Result<(), String> {
        if self.counters.is_none() {
            self.counters =
                Some(diagnose::install_flow_counters(self.enforcer.lab).map_err(|e| e.to_string()));
        }
        if self.serving_case.as_deref() != Some(case.id.as_str()) {
            let ports: Vec<(u16, Protocol)> = case
                .served_ports
                .iter()
                .map(|p| (p.port, p.protocol))
                .collect();
            for pod in &ctx.file.pods {
                self.enforcer
                    .lab
                    .serve(pod, &ports)
                    .map_err(|e| e.to_string())?;
            }
            self.serving_case = Some(case.id.clone());
        }
        self.enforcer
            .enforce(state)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn probe(
        &mut self,
        ctx: &RunContext<'_>,
        _: &ClusterState,
        probe: &Probe,
    ) -> Result<Vec<Vec<Observed>>, String> {
        if probe.protocol == Protocol::Sctp {
            let n = ctx.file.pods.len();
            return Ok(vec![
                vec![Observed::Skipped(SCTP_SKIP_REASON.to_string()); n];
                n
            ]);
        }
        let (grid, measured) = self.enforcer.measure_traced(
            &ctx.file.pods,
            ctx.family,
            probe.port,
            probe.protocol,
            self.timeout,
        )?;
        self.last = measured;
        Ok(grid)
    }

    fn explain(
        &mut self,
        ctx: &RunContext<'_>,
        _: &Probe,
        src: usize,
        dst: usize,
    ) -> Option<String> {
        let (request, outcome, trace) = self.last.get(src * ctx.file.pods.len() + dst)?;
        let mut s = self.enforcer.explain_probe(request, outcome, trace, true);
        if let Some(Err(e)) = &self.counters {
            let _ = writeln!(s, "  (flow counters could not be installed: {e})");
        }
        Some(s)
    }
}
