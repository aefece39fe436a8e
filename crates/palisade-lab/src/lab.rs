//! `Lab`: creation (namespaces, veths, addresses, routes), accessors, serving, probing,
//! teardown.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use palisade_model::{IpFamily, Key, Labels, Pod, Protocol};

use crate::cmd::{self, SETUP_TIMEOUT};
use crate::netns::{self, NETNS_PREFIX, NetnsHandle};
use crate::plan::{self, GATEWAY_V6, Plan};
use crate::probe::{
    self, ConnectTiming, MAX_PARALLEL_PROBES, PortSource, ProbeOutcome, ProbeRequest, ProbeTrace,
    SourcePorts,
};
use crate::server::{Listener, ProbeServer};
use crate::{LabError, SCTP_SKIP_REASON};

/// Bound of [`Lab::run_in_node`] / [`Lab::run_in_pod`] commands.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which address families the pods get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub const DUAL: Families = Families { v4: true, v6: true };
    pub const V4_ONLY: Families = Families {
        v4: true,
        v6: false,
    };
    pub const V6_ONLY: Families = Families {
        v4: false,
        v6: true,
    };
}

impl Default for Families {
    fn default() -> Self {
        Families::DUAL
    }
}

/// One pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPod {
    pub key: Key,
    /// `None`: placed round-robin (see [`LabSpec`]).
    pub node: Option<usize>,
    /// Served from creation on; change later with [`Lab::serve`].
    pub ports: Vec<(u16, Protocol)>,
}

impl LabPod {
    pub fn new(key: Key) -> Self {
        Self {
            key,
            node: None,
            ports: Vec::new(),
        }
    }

    pub fn on_node(mut self, node: usize) -> Self {
        self.node = Some(node);
        self
    }

    pub fn with_ports(mut self, ports: impl IntoIterator<Item = (u16, Protocol)>) -> Self {
        self.ports = ports.into_iter().collect();
        self
    }
}

/// What to build. Pods without a node are placed round-robin per namespace, so the pods of
/// one namespace spread over the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Default 2; at most [`plan::MAX_NODES`].
    pub nodes: usize,
    pub pods: Vec<LabPod>,
    /// Default: both (each pod gets one IPv4 and one IPv6 address).
    pub families: Families,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            nodes: 2,
            pods: Vec::new(),
            families: Families::DUAL,
        }
    }
}

impl LabSpec {
    /// Two nodes, dual-stack, these pods placed round-robin and serving nothing yet.
    pub fn with_pods(keys: impl IntoIterator<Item = Key>) -> Self {
        Self {
            pods: keys.into_iter().map(LabPod::new).collect(),
            ..Self::default()
        }
    }
}

/// What [`Lab::serve`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Everything the pod serves now.
    pub serving: Vec<(u16, Protocol)>,
    /// Asked for but not served, with the reason (SCTP).
    pub skipped: Vec<(u16, Protocol, String)>,
}

#[derive(Debug)]
struct LabPodState {
    key: Key,
    node: usize,
    netns: NetnsHandle,
    ips: Vec<IpAddr>,
}

/// Deletes the lab's namespaces when dropped (also on a failed `create`).
#[derive(Debug)]
struct NetnsGuard {
    /// `palisade-<labid>-`: every namespace of the lab starts with it.
    match_prefix: String,
    armed: bool,
}

impl NetnsGuard {
    fn cleanup(&mut self) -> Result<usize, LabError> {
        if !self.armed {
            return Ok(0);
        }
        let result = netns::delete_netns_matching(&self.match_prefix);
        if result.is_ok() {
            self.armed = false;
            netns::unregister(&self.match_prefix);
        }
        result
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::error!(prefix = %self.match_prefix, error = %e, "lab: cleanup failed; run `palisade lab down`");
            eprintln!(
                "palisade-lab: cleanup of {}* failed: {e}",
                self.match_prefix
            );
        }
    }
}

/// A running lab: nodes and pods as network namespaces on this machine, a probe server in
/// every pod. Dropping it stops the servers and deletes every namespace it created.
#[derive(Debug)]
pub struct Lab {
    id: String,
    prefix: String,
    node_names: Vec<String>,
    nodes: Vec<NetnsHandle>,
    pods: Vec<LabPodState>,
    index: HashMap<Key, usize>,
    families: Families,
    served: Mutex<Vec<BTreeSet<(u16, Protocol)>>>,
    server: Option<ProbeServer>,
    guard: NetnsGuard,
    /// When the lab was created: the origin of the times in diagnostics.
    epoch: std::time::Instant,
    /// UDP probes' source ports, so no probe rides an earlier probe's conntrack entry.
    udp_ports: SourcePorts,
}

fn node_ns(prefix: &str, i: usize) -> String {
    format!("{prefix}-n{i}")
}

fn pod_ns(prefix: &str, j: usize) -> String {
    format!("{prefix}-p{j}")
}

fn new_lab_id() -> String {
    loop {
        let id = format!("{:08x}", rand::random::<u32>());
        if netns::list_netns(&format!("{NETNS_PREFIX}{id}-")).is_empty() {
            return id;
        }
    }
}

impl Lab {
    /// Builds the lab. Refuses (before creating anything) when a prerequisite is missing or
    /// the host itself uses an address in the lab ranges. On any later failure, whatever
    /// was created is deleted before the error returns.
    pub fn create(spec: LabSpec) -> Result<Lab, LabError> {
        let plan = plan::plan(&spec)?;
        let missing = netns::lab_prerequisites_missing();
        if !missing.is_empty() {
            return Err(LabError::Prerequisites(missing));
        }
        netns::check_host_ranges()?;

        let id = new_lab_id();
        let prefix = format!("{NETNS_PREFIX}{id}");
        let match_prefix = format!("{prefix}-");
        netns::register(&match_prefix);
        let guard = NetnsGuard {
            match_prefix,
            armed: true,
        };
        let started = std::time::Instant::now();

        build(&prefix, &plan, spec.families)?;

        let nodes = (0..plan.nodes)
            .map(|i| NetnsHandle::open(&node_ns(&prefix, i)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pods = Vec::with_capacity(plan.pods.len());
        let mut index = HashMap::new();
        for (j, p) in plan.pods.iter().enumerate() {
            index.insert(p.key.clone(), j);
            pods.push(LabPodState {
                key: p.key.clone(),
                node: p.node,
                netns: NetnsHandle::open(&pod_ns(&prefix, j))?,
                ips: p.ips.clone(),
            });
        }
        let lab = Lab {
            id,
            prefix,
            node_names: (0..plan.nodes).map(|i| format!("node-{i}")).collect(),
            nodes,
            served: Mutex::new(vec![BTreeSet::new(); pods.len()]),
            pods,
            index,
            families: spec.families,
            server: Some(ProbeServer::start()?),
            guard,
            epoch: started,
            udp_ports: SourcePorts::default(),
        };
        for p in &plan.pods {
            lab.serve(&p.key, &p.ports)?;
        }
        tracing::info!(
            prefix = %lab.prefix,
            nodes = plan.nodes,
            pods = plan.pods.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "lab: created"
        );
        Ok(lab)
    }

    /// When the lab was created; diagnostics print times relative to it.
    pub fn epoch(&self) -> std::time::Instant {
        self.epoch
    }

    /// The random id of this lab (8 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `palisade-<labid>`: every namespace of this lab is named `<prefix>-n<i>` (nodes) or
    /// `<prefix>-p<j>` (pods, `j` = position in the spec).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `node-0`, `node-1`, ...: the node names to give pods in the model.
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The netns name of node `i`. Panics if there is no such node.
    pub fn node_netns(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node's own addresses (on its `lo`; the IPv4 one is also its pods' gateway): what
    /// a hostNetwork pod on this node would appear as. Panics if there is no such node.
    pub fn node_ips(&self, i: usize) -> Vec<IpAddr> {
        assert!(i < self.nodes.len(), "the lab has no node {i}");
        let mut ips = Vec::new();
        if self.families.v4 {
            ips.push(plan::node_addr_v4(i).into());
        }
        if self.families.v6 {
            ips.push(plan::node_addr_v6(i).into());
        }
        ips
    }

    pub fn families(&self) -> Families {
        self.families
    }

    /// Every pod, in spec order.
    pub fn pods(&self) -> impl Iterator<Item = &Key> {
        self.pods.iter().map(|p| &p.key)
    }

    fn pod(&self, key: &Key) -> Result<&LabPodState, LabError> {
        self.index
            .get(key)
            .map(|&j| &self.pods[j])
            .ok_or_else(|| LabError::UnknownPod(key.clone()))
    }

    /// The pod's addresses (IPv4 first); empty for a pod the lab does not have.
    pub fn pod_ips(&self, key: &Key) -> &[IpAddr] {
        self.pod(key).map(|p| p.ips.as_slice()).unwrap_or(&[])
    }

    pub fn pod_ip(&self, key: &Key, family: IpFamily) -> Option<IpAddr> {
        self.pod_ips(key)
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// The lab's pods as the engine sees them: at their lab addresses, on their lab nodes,
    /// each labelled `app: <pod name>`.
    pub fn engine_pods(&self) -> Vec<Pod> {
        self.pods
            .iter()
            .map(|p| {
                let mut pod = Pod::new(
                    &p.key.namespace,
                    &p.key.name,
                    Labels::from([("app".to_string(), p.key.name.clone())]),
                );
                pod.ips = p.ips.clone();
                pod.node = Some(self.node_names()[p.node].clone());
                pod
            })
            .collect()
    }

    /// The index of the node the pod runs on.
    pub fn pod_node(&self, key: &Key) -> Option<usize> {
        self.pod(key).ok().map(|p| p.node)
    }

    pub fn pod_netns(&self, key: &Key) -> Option<&str> {
        self.pod(key).ok().map(|p| p.netns.name.as_str())
    }

    /// The node-side interface of the pod's veth, in its node's netns (`p<j>`): packets
    /// from the pod come in on it (egress checks), packets to the pod leave on it (ingress).
    pub fn pod_interface(&self, key: &Key) -> Option<String> {
        self.index.get(key).map(|j| format!("p{j}"))
    }

    /// Runs `args` inside node `i`'s netns (`ip netns exec NODE args...`), feeding `stdin`,
    /// bounded by [`RUN_TIMEOUT`]. Returns the output whatever the exit status: check it.
    pub fn run_in_node(
        &self,
        i: usize,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, LabError> {
        let ns = self.nodes.get(i).ok_or(LabError::UnknownNode(i))?;
        run_in(&ns.name, args, stdin)
    }

    /// Like [`Lab::run_in_node`], in a pod's netns.
    pub fn run_in_pod(
        &self,
        key: &Key,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, LabError> {
        run_in(&self.pod(key)?.netns.name, args, stdin)
    }

    /// Makes the pod serve exactly `ports` from now on (opening new listeners, closing the
    /// ones no longer listed). Every port is served on each of the pod's addresses. SCTP
    /// ports are skipped (see the summary): this machine's kernel has no SCTP sockets.
    pub fn serve(&self, key: &Key, ports: &[(u16, Protocol)]) -> Result<ServeSummary, LabError> {
        let j = *self
            .index
            .get(key)
            .ok_or_else(|| LabError::UnknownPod(key.clone()))?;
        let pod = &self.pods[j];
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| LabError::Server("stopped".into()))?;
        let mut summary = ServeSummary::default();
        let mut wanted = BTreeSet::new();
        for &(port, protocol) in ports {
            if protocol == Protocol::Sctp {
                if !summary
                    .skipped
                    .iter()
                    .any(|s| (s.0, s.1) == (port, protocol))
                {
                    summary
                        .skipped
                        .push((port, protocol, SCTP_SKIP_REASON.into()));
                }
            } else {
                wanted.insert((port, protocol));
            }
        }
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let current = &mut served[j];
        let gone: Vec<_> = current.difference(&wanted).copied().collect();
        let new: Vec<_> = wanted.difference(current).copied().collect();
        server.remove(j, gone.clone())?;
        for g in &gone {
            current.remove(g);
        }
        let ips = pod.ips.clone();
        let bound = pod.netns.run(|| {
            let mut listeners = Vec::new();
            for &(port, protocol) in &new {
                let reply = format!("palisade-lab {key} {port}/{protocol}\n").into_bytes();
                for &ip in &ips {
                    let l =
                        Listener::bind(j, ip, port, protocol, reply.clone()).map_err(|source| {
                            LabError::Io {
                                context: format!("{key}: serve {ip} port {port}/{protocol}"),
                                source,
                            }
                        })?;
                    listeners.push(l);
                }
            }
            Ok::<_, LabError>(listeners)
        })??;
        server.add(bound)?;
        current.extend(new);
        summary.serving = current.iter().copied().collect();
        for (port, protocol, _) in &summary.skipped {
            tracing::info!(pod = %key, port, %protocol, "lab: not served: {SCTP_SKIP_REASON}");
        }
        Ok(summary)
    }

    /// [`Lab::serve`] on every pod.
    pub fn serve_all(&self, ports: &[(u16, Protocol)]) -> Result<ServeSummary, LabError> {
        let mut last = ServeSummary::default();
        for j in 0..self.pods.len() {
            last = self.serve(&self.pods[j].key, ports)?;
        }
        Ok(last)
    }

    /// What the pod serves now.
    pub fn served_ports(&self, key: &Key) -> Vec<(u16, Protocol)> {
        let Some(&j) = self.index.get(key) else {
            return Vec::new();
        };
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served[j].iter().copied().collect()
    }

    /// One probe from inside the source pod's netns. TCP: connect and read the reply.
    /// UDP: a datagram (sent twice within the timeout) must be answered.
    pub fn probe(
        &self,
        from: &Key,
        to: IpAddr,
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> ProbeOutcome {
        let request = ProbeRequest {
            from: from.clone(),
            to,
            port,
            protocol,
            timeout,
        };
        self.probe_many(std::slice::from_ref(&request))
            .pop()
            .expect("one outcome per request")
    }

    /// Runs every probe, up to [`MAX_PARALLEL_PROBES`] at once; outcomes in request order.
    pub fn probe_many(&self, requests: &[ProbeRequest]) -> Vec<ProbeOutcome> {
        self.probe_many_traced(requests)
            .into_iter()
            .map(|(outcome, _)| outcome)
            .collect()
    }

    /// [`Lab::probe_many`], with what each probe did and when (its source address, sends,
    /// reply), for explaining a surprising outcome.
    pub fn probe_many_traced(&self, requests: &[ProbeRequest]) -> Vec<(ProbeOutcome, ProbeTrace)> {
        let sources: Vec<Result<&NetnsHandle, ProbeOutcome>> = requests
            .iter()
            .map(|r| {
                self.pod(&r.from)
                    .map(|p| &p.netns)
                    .map_err(|e| ProbeOutcome::Error(e.to_string()))
            })
            .collect();
        run_parallel(requests.len(), &self.udp_ports, |i| {
            let r = &requests[i];
            (sources[i].clone(), r.to, r.port, r.protocol, r.timeout)
        })
    }

    /// A probe from node `i` itself (as the kubelet would), not from a pod.
    pub fn probe_from_node(
        &self,
        i: usize,
        to: IpAddr,
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> ProbeOutcome {
        let source = self
            .nodes
            .get(i)
            .ok_or_else(|| ProbeOutcome::Error(format!("unknown node {i}")));
        run_parallel(1, &self.udp_ports, |_| {
            (source.clone(), to, port, protocol, timeout)
        })
        .pop()
        .expect("one")
        .0
    }

    /// One TCP connect from the pod, timed (handshake only); for latency measurements.
    pub fn connect_once(&self, from: &Key, to: SocketAddr, timeout: Duration) -> ConnectTiming {
        let failed = |e: LabError| ConnectTiming {
            outcome: ProbeOutcome::Error(e.to_string()),
            elapsed: Duration::ZERO,
        };
        match self.pod(from) {
            Ok(p) => p
                .netns
                .run(|| probe::connect_once(to, timeout))
                .unwrap_or_else(failed),
            Err(e) => failed(e),
        }
    }

    /// Stops the servers and deletes every namespace of the lab, reporting failure (which
    /// `Drop` can only log).
    pub fn destroy(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        // Sockets and open netns handles keep a namespace alive: release them first.
        self.server.take();
        self.pods.clear();
        self.nodes.clear();
        self.guard.cleanup().map(drop)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(prefix = %self.prefix, error = %e, "lab: teardown failed; run `palisade lab down`");
            eprintln!("palisade-lab: teardown of {} failed: {e}", self.prefix);
        }
    }
}

fn run_in(netns: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, LabError> {
    let mut full = vec!["netns", "exec", netns];
    full.extend_from_slice(args);
    cmd::run("ip", &full, stdin, RUN_TIMEOUT)
}

type Job<'a> = (
    Result<&'a NetnsHandle, ProbeOutcome>,
    IpAddr,
    u16,
    Protocol,
    Duration,
);

/// Runs `n` probes on up to [`MAX_PARALLEL_PROBES`] fresh threads, each entering the
/// source's netns before its probe (and never leaving a caller's thread in another netns).
fn run_parallel<'a>(
    n: usize,
    udp_ports: &SourcePorts,
    job: impl Fn(usize) -> Job<'a> + Sync,
) -> Vec<(ProbeOutcome, ProbeTrace)> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<(ProbeOutcome, ProbeTrace)>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    let workers = n.min(MAX_PARALLEL_PROBES);
    thread::scope(|s| {
        let work = || {
            let mut current: Option<&str> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (source, to, port, protocol, timeout) = job(i);
                let outcome = match source {
                    Err(outcome) => (outcome, ProbeTrace::default()),
                    Ok(ns) if current == Some(ns.name.as_str()) => {
                        let source = PortSource {
                            ports: udp_ports,
                            netns: &ns.name,
                        };
                        probe::run(to, port, protocol, timeout, source)
                    }
                    Ok(ns) => match ns.enter() {
                        Ok(()) => {
                            current = Some(ns.name.as_str());
                            let source = PortSource {
                                ports: udp_ports,
                                netns: &ns.name,
                            };
                            probe::run(to, port, protocol, timeout, source)
                        }
                        Err(e) => (ProbeOutcome::Error(e.to_string()), ProbeTrace::default()),
                    },
                };
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            }
        };
        let mut spawned = 0;
        for _ in 0..workers {
            let ok = thread::Builder::new()
                .name("palisade-lab-probe".into())
                .stack_size(256 * 1024)
                .spawn_scoped(s, work)
                .is_ok();
            spawned += usize::from(ok);
        }
        if spawned == 0 {
            tracing::warn!("lab: no probe thread could be spawned");
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| {
                    (
                        ProbeOutcome::Error("no probe thread could run".into()),
                        ProbeTrace::default(),
                    )
                })
        })
        .collect()
}

// ---- building ----

/// Creates everything, in phases that each need the previous one done:
/// namespaces; per-netns sysctls; veths (created by the nodes, pod ends straight into the
/// pod namespaces); pod config; node addresses and links up; node routes.
fn build(prefix: &str, plan: &Plan, families: crate::Families) -> Result<(), LabError> {
    let node_names: Vec<String> = (0..plan.nodes).map(|i| node_ns(prefix, i)).collect();
    let pod_names: Vec<String> = (0..plan.pods.len()).map(|j| pod_ns(prefix, j)).collect();

    // 1. namespaces (a file under /run/netns each; nothing in the host's network stack).
    let mut script = String::new();
    for name in node_names.iter().chain(&pod_names) {
        let _ = writeln!(script, "netns add {name}");
    }
    cmd::ip_batch(None, &script)?;

    // 2. sysctls, inside each namespace; before any interface exists, so new interfaces
    //    inherit them (no DAD: addresses usable at once).
    let mut no_dad = String::new();
    if families.v6 {
        no_dad.push_str(
            "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad && \
             echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
        );
    }
    let mut node_sysctl = String::from("echo 1 > /proc/sys/net/ipv4/ip_forward");
    if families.v6 {
        node_sysctl.push_str(" && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding && ");
        node_sysctl.push_str(&no_dad);
    }
    for name in &node_names {
        cmd::run_ok(
            "ip",
            &["netns", "exec", name, "sh", "-c", &node_sysctl],
            None,
            SETUP_TIMEOUT,
        )?;
    }
    if families.v6 {
        for name in &pod_names {
            cmd::run_ok(
                "ip",
                &["netns", "exec", name, "sh", "-c", &no_dad],
                None,
                SETUP_TIMEOUT,
            )?;
        }
    }

    // 3. links, created from the node side.
    for (i, node) in node_names.iter().enumerate() {
        cmd::ip_batch(
            Some(node),
            &node_links_script(plan, i, &node_names, &pod_names),
        )?;
    }
    // 4. pods.
    for (j, pod) in pod_names.iter().enumerate() {
        cmd::ip_batch(Some(pod), &pod_script(plan, j, families))?;
    }
    // 5. node addresses, every link up; 6. node routes, once every link is up.
    for (i, node) in node_names.iter().enumerate() {
        cmd::ip_batch(Some(node), &node_addr_script(plan, i, families))?;
    }
    for (i, node) in node_names.iter().enumerate() {
        cmd::ip_batch(Some(node), &node_route_script(plan, i, families))?;
    }
    Ok(())
}

/// Which link (index) joins nodes `a` and `b`, and which side `a` is.
fn link_of(plan: &Plan, a: usize, b: usize) -> (usize, usize) {
    let (lo, hi) = (a.min(b), a.max(b));
    let l = plan
        .links
        .iter()
        .position(|&x| x == (lo, hi))
        .expect("full mesh");
    (l, usize::from(a > b))
}

fn node_links_script(plan: &Plan, i: usize, node_names: &[String], pod_names: &[String]) -> String {
    let mut s = String::from("link set lo up\n");
    for (j, _) in plan.pods.iter().enumerate().filter(|(_, p)| p.node == i) {
        let _ = writeln!(
            s,
            "link add p{j} type veth peer name eth0 netns {}",
            pod_names[j]
        );
    }
    for (b, peer) in node_names.iter().enumerate().skip(i + 1) {
        let _ = writeln!(s, "link add n{b} type veth peer name n{i} netns {peer}");
    }
    s
}

fn pod_script(plan: &Plan, j: usize, families: crate::Families) -> String {
    let p = &plan.pods[j];
    let mut s = String::from("link set lo up\nlink set eth0 up\n");
    if families.v4 {
        let gw = plan::node_addr_v4(p.node);
        let _ = writeln!(
            s,
            "addr add {}/32 dev eth0",
            plan::pod_addr_v4(p.node, p.slot)
        );
        let _ = writeln!(s, "route add {gw}/32 dev eth0 scope link");
        let _ = writeln!(s, "route add 0.0.0.0/0 via {gw} dev eth0");
    }
    if families.v6 {
        let _ = writeln!(
            s,
            "addr add {}/128 dev eth0 nodad",
            plan::pod_addr_v6(p.node, p.slot)
        );
        let _ = writeln!(s, "route add ::/0 via {GATEWAY_V6} dev eth0");
    }
    s
}

fn node_addr_script(plan: &Plan, i: usize, families: crate::Families) -> String {
    let mut s = String::new();
    if families.v4 {
        let _ = writeln!(s, "addr add {}/32 dev lo", plan::node_addr_v4(i));
    }
    if families.v6 {
        let _ = writeln!(s, "addr add {}/128 dev lo", plan::node_addr_v6(i));
    }
    for (j, _) in plan.pods.iter().enumerate().filter(|(_, p)| p.node == i) {
        let _ = writeln!(s, "link set p{j} up");
        if families.v4 {
            let _ = writeln!(s, "addr add {}/32 dev p{j}", plan::node_addr_v4(i));
        }
        if families.v6 {
            let _ = writeln!(s, "addr add {GATEWAY_V6}/64 dev p{j} nodad");
        }
    }
    for b in (0..plan.nodes).filter(|&b| b != i) {
        let (l, side) = link_of(plan, i, b);
        let _ = writeln!(s, "link set n{b} up");
        if families.v4 {
            let _ = writeln!(s, "addr add {}/30 dev n{b}", plan::link_addr_v4(l, side));
        }
        if families.v6 {
            let _ = writeln!(
                s,
                "addr add {}/126 dev n{b} nodad",
                plan::link_addr_v6(l, side)
            );
        }
    }
    s
}

fn node_route_script(plan: &Plan, i: usize, families: crate::Families) -> String {
    let mut s = String::new();
    for (j, p) in plan.pods.iter().enumerate().filter(|(_, p)| p.node == i) {
        if families.v4 {
            let _ = writeln!(
                s,
                "route add {}/32 dev p{j} scope link",
                plan::pod_addr_v4(i, p.slot)
            );
        }
        if families.v6 {
            let _ = writeln!(s, "route add {}/128 dev p{j}", plan::pod_addr_v6(i, p.slot));
        }
    }
    for b in (0..plan.nodes).filter(|&b| b != i) {
        let (l, side) = link_of(plan, i, b);
        let peer = 1 - side;
        if families.v4 {
            let _ = writeln!(
                s,
                "route add {} via {} dev n{b}",
                plan::node_pod_subnet_v4(b),
                plan::link_addr_v4(l, peer)
            );
        }
        if families.v6 {
            let _ = writeln!(
                s,
                "route add {} via {} dev n{b}",
                plan::node_pod_subnet_v6(b),
                plan::link_addr_v6(l, peer)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_for_a_two_node_lab() {
        let spec = LabSpec::with_pods(["x/a", "x/b"].map(|k| k.parse().unwrap()));
        let plan = plan::plan(&spec).unwrap();
        let nodes = vec!["palisade-abc-n0".to_string(), "palisade-abc-n1".to_string()];
        let pods = vec!["palisade-abc-p0".to_string(), "palisade-abc-p1".to_string()];
        assert_eq!(
            node_links_script(&plan, 0, &nodes, &pods),
            "link set lo up\n\
             link add p0 type veth peer name eth0 netns palisade-abc-p0\n\
             link add n1 type veth peer name n0 netns palisade-abc-n1\n"
        );
        assert_eq!(
            pod_script(&plan, 1, Families::DUAL),
            "link set lo up\nlink set eth0 up\n\
             addr add 198.18.2.2/32 dev eth0\n\
             route add 198.18.2.1/32 dev eth0 scope link\n\
             route add 0.0.0.0/0 via 198.18.2.1 dev eth0\n\
             addr add fd50:a15a:de:2::2/128 dev eth0 nodad\n\
             route add ::/0 via fe80::1 dev eth0\n"
        );
        assert_eq!(
            node_route_script(&plan, 1, Families::DUAL),
            "route add 198.18.2.2/32 dev p1 scope link\n\
             route add fd50:a15a:de:2::2/128 dev p1\n\
             route add 198.18.1.0/24 via 198.18.0.1 dev n0\n\
             route add fd50:a15a:de:1::/64 via fd50:a15a:de::1 dev n0\n"
        );
        assert!(
            node_addr_script(&plan, 1, Families::DUAL).contains("addr add 198.18.0.2/30 dev n0\n")
        );
    }
}
