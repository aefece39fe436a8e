//! Enforcement in the lab: one dataplane per lab node, fed with the IR the engine compiles
//! for that node, and a conformance [`Prober`] that measures reachability with real
//! packets. The backend is chosen by the caller; this module knows none.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use palisade_conformance::{Case, Observed, Probe, Prober, RunContext};
use palisade_engine::ClusterState;
use palisade_ir::{
    ApplyReport, Dataplane, DataplaneError, NodeRuleset, Reconciled, Reconciler, ReconcilerConfig,
};
use palisade_model::{IpFamily, Key, Protocol};

use crate::{Lab, ProbeOutcome, ProbeRequest, SCTP_SKIP_REASON};

/// The lab's nodes, each with its dataplane driven by the shared [`Reconciler`].
pub struct Enforcer<'a> {
    lab: &'a Lab,
    nodes: Vec<Reconciler>,
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
        let outcomes = self.lab.probe_many(&requests);
        let cells: Vec<Observed> = outcomes
            .into_iter()
            .map(|o| match o {
                ProbeOutcome::Connected => Observed::Allowed,
                ProbeOutcome::Skipped(reason) => Observed::Skipped(reason),
                // Dropped packets time out; a refusal or error is a failed connection too.
                _ => Observed::Denied,
            })
            .collect();
        Ok(cells.chunks(pods.len()).map(<[Observed]>::to_vec).collect())
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
        self.enforcer.measure(
            &ctx.file.pods,
            ctx.family,
            probe.port,
            probe.protocol,
            self.timeout,
        )
    }
}
