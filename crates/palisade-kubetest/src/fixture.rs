//! [`LabCluster`]: a control plane, a lab, and one real agent per lab node, wired together.

use std::time::Duration;

use kube::Client;
use palisade_lab::{Lab, LabSpec};
use palisade_model::{Key, Labels};

use crate::agent::{Agent, AgentSpec};
use crate::control_plane::{ControlPlane, ControlPlaneOptions};
use crate::error::{Error, Result};
use crate::kubelet::{Admin, EventLedger, Kubelet, PodPort, RunPod};
use crate::proxy::TcpProxy;

/// How long an agent gets to become ready (first list of three kinds and a full apply).
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an agent gets to apply the events of the writes made so far. Generous: on a
/// loaded 2-core machine the API server, two agents and the probes share the CPU.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct LabClusterSpec {
    pub lab: LabSpec,
    /// Created before any agent starts (with their labels).
    pub namespaces: Vec<(String, Labels)>,
    pub control_plane: ControlPlaneOptions,
    /// Agents reach the API server through a [`TcpProxy`] (to cut it), not directly.
    pub via_proxy: bool,
}

/// Everything an end-to-end test needs. Fields drop in order: agents first (they stop
/// touching the lab), then the proxy, the lab (its namespaces, and the rules in them, go)
/// and the control plane last.
pub struct LabCluster {
    pub agents: Vec<Agent>,
    pub proxy: Option<TcpProxy>,
    pub lab: Lab,
    pub client: Client,
    pub kubelet: Kubelet,
    pub admin: Admin,
    pub ledger: EventLedger,
    /// The agents' kubeconfig (deploy/ RBAC; through the proxy when there is one).
    pub agent_kubeconfig: std::path::PathBuf,
    pub cp: ControlPlane,
}

impl std::fmt::Debug for LabCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabCluster")
            .field("agents", &self.agents)
            .field("proxy", &self.proxy)
            .field("lab", &self.lab.prefix())
            .field("cp", &self.cp)
            .finish_non_exhaustive()
    }
}

impl LabCluster {
    /// Starts the control plane, builds the lab, creates the namespaces and writes the
    /// agents' kubeconfig. No agent runs yet: write the initial objects, then
    /// [`LabCluster::start_agents`].
    pub async fn start(spec: LabClusterSpec) -> Result<LabCluster> {
        let cp = ControlPlane::start_with(spec.control_plane).await?;
        let lab =
            Lab::create(spec.lab).map_err(|e| Error::other(format!("creating the lab: {e}")))?;
        let client = cp.admin_client().await?;
        let ledger = EventLedger::default();
        let kubelet = Kubelet::new(client.clone(), ledger.clone());
        let admin = Admin::new(client.clone(), ledger.clone());
        for (name, labels) in &spec.namespaces {
            admin.ensure_namespace(name, labels).await?;
        }
        let proxy = if spec.via_proxy {
            Some(TcpProxy::start(cp.api_addr())?)
        } else {
            None
        };
        let agent_kubeconfig = match &proxy {
            Some(p) => cp.agent_kubeconfig_via(p.addr()).await?,
            None => cp.agent_kubeconfig().await?,
        };
        Ok(LabCluster {
            agents: Vec::new(),
            proxy,
            lab,
            client,
            kubelet,
            admin,
            ledger,
            agent_kubeconfig,
            cp,
        })
    }

    /// The spec of the agent of lab node `i` (not started).
    pub fn agent_spec(&self, i: usize) -> Result<AgentSpec> {
        AgentSpec::new(
            &self.lab.node_names()[i],
            &self.agent_kubeconfig,
            Some(self.lab.node_netns(i)),
            self.cp.dir(),
        )
    }

    /// Starts one agent per lab node (with `customize` applied to each spec), waits until
    /// all are ready and takes their baselines. Make no write meanwhile.
    pub async fn start_agents(&mut self, customize: impl Fn(&mut AgentSpec)) -> Result<()> {
        for i in 0..self.lab.node_count() {
            let mut spec = self.agent_spec(i)?;
            customize(&mut spec);
            self.agents.push(Agent::spawn(spec)?);
        }
        let ledger = self.ledger.get();
        for agent in &mut self.agents {
            agent.wait_ready(AGENT_READY_TIMEOUT).await?;
            agent.set_baseline(ledger)?;
        }
        Ok(())
    }

    /// Starts agent `i` again (after a kill or SIGTERM), waits until it is ready and takes
    /// its new baseline. Returns how long it took to become ready.
    pub async fn restart_agent(&mut self, i: usize) -> Result<Duration> {
        let ledger = self.ledger.get();
        let agent = &mut self.agents[i];
        agent.start()?;
        let took = agent.wait_ready(AGENT_READY_TIMEOUT).await?;
        agent.set_baseline(ledger)?;
        Ok(took)
    }

    /// Waits until every running agent has applied every write made so far.
    pub async fn settle(&mut self) -> Result<()> {
        let ledger = self.ledger.get();
        for agent in &mut self.agents {
            if agent.is_running() {
                agent.wait_caught_up(ledger, CATCH_UP_TIMEOUT).await?;
            }
        }
        Ok(())
    }

    /// Creates `key` in the API as running on its lab node with the lab's addresses.
    pub async fn run_lab_pod(&self, key: &Key, labels: Labels, ports: Vec<PodPort>) -> Result<()> {
        let pod = RunPod::on_lab(&self.lab, key, key, labels, ports)?;
        self.kubelet.run_pod(&pod).await
    }

    /// The agent of the lab node `key` runs on.
    pub fn agent_of(&mut self, key: &Key) -> Option<&mut Agent> {
        let node = self.lab.pod_node(key)?;
        self.agents.get_mut(node)
    }

    /// Every agent's log (the end of each), for a failure message.
    pub fn agent_logs(&self, lines: usize) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- agent {} ---\n{}\n", a.node(), a.log_tail(lines)))
            .collect()
    }
}
