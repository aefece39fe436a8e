//! Dataplane benchmark of the nftables and iptables backends, with real packets in the lab
//! (root only). Results and the commands that produced them: BENCHMARKS.md, "Dataplane
//! (nftables)" and "Dataplane (iptables + ipset)".
//!
//! ```text
//! cargo run --release -p palisade-lab --example dataplane_bench -- [options]
//!   --backends nft             the backends measured, comma-separated, each against the
//!                              same baseline in the same run: nft, iptables-nft,
//!                              iptables-legacy (one at a time on the enforcing nodes; the
//!                              previous one is removed first)
//!   --sizes 0,100,1000,10000,10000:50
//!                              policies installed (and as many pods as addresses); `N:M`:
//!                              M non-matching policies per direction on the measured
//!                              pods (default 20)
//!   --dense                    every generated pod on the two enforcing nodes (stress);
//!                              default: --pods-per-node pods per node, the rest elsewhere
//!   --pods-per-node 200        node density without --dense
//!   --window-ms 500            one measurement window of the connection loop
//!   --rounds 12                enforced/baseline window pairs per size (order alternates)
//!   --iperf-secs 5             length of one iperf3 run (0: skip iperf3)
//!   --iperf-rounds 3           enforced/baseline iperf3 run pairs (order alternates)
//!   --updates 50               pod relabels, and as many policy adds, at the last size
//!                              (changes that leave both tables unchanged are not counted)
//!   --old-layout               also measure the measured chains rewritten in the layout
//!                              before nft v2 (one set lookup per rule), in the same run
//!   --seed 7                   seed of the generated cluster and of the updates
//!   --dump DIR                 only write node 0's full nft script per size into DIR
//! ```
//!
//! The lab has four nodes. `bench/client` (node 0) -> `bench/server` (node 1) is the
//! enforced pair: nodes 0 and 1 carry the nft table. `base/client` (node 2) ->
//! `base/server` (node 3) is the baseline pair: the same path (pod veth, node, node link,
//! node, pod veth), through nodes without any table. Windows on the two pairs alternate, so
//! the baseline is measured in the same run, interleaved, without ever deleting a table
//! (deleting a large table keeps the kernel busy for seconds after the command returns).
//! An A/A calibration (both pairs, no table anywhere) comes first.
//!
//! For each size N, the engine state holds the measured pods, N generated pods
//! (`palisade_testkit::generate_cluster`: addresses that are not lab pods) and N policies:
//! the generated ones plus the bench namespace's own, a default deny, M ingress policies
//! selecting the server and M egress policies selecting the client that never match the
//! measured flow, and one allow per direction named to come last in its chain. The measured
//! SYN therefore meets, on each node, the base chain, a dispatch-map lookup and one
//! class-map lookup (`peer . protocol . port`, whatever M is) before it is allowed; with
//! `--old-layout`, M+1 set-matching rules instead, as nft did before v2. Generated pods are spread `--pods-per-node` per
//! node over as many nodes as needed (nodes 0 and 1 among them: their dispatch maps and
//! chains grow with that density, their peer sets with the whole cluster), or with `--dense`
//! all on nodes 0 and 1 (maps of N/2 endpoints: a stress far beyond a real node).
//!
//! Measured:
//! - new TCP connections per second and handshake latency (p50, p99): one thread inside the
//!   client's netns connects in a loop for a fixed window to the server's probe listener and
//!   closes each connection with a reset (SO_LINGER 0: no TIME_WAIT, source ports never run
//!   out); conntrack is flushed on the enforcing nodes before each enforced window. Also the
//!   CPU time of that thread per connection: the kernel has no IRQ time accounting, so the
//!   softirq work of the whole handshake path (both nodes' netfilter included) is charged
//!   to it, while the other load of a shared machine is not. Its ratio is the figure that
//!   stays put from run to run; the wall-clock rate swings with the machine.
//! - one long TCP flow with iperf3 (server in the server's netns, client in the client's), on
//!   both pairs, at the last size.
//! - at the last size: the time from a change (a relabel of a pod on an enforcing node, a
//!   policy add selecting one) to the kernel holding it: engine upsert (incremental
//!   `LiveState`, as the agent), compile of the node, the IR diff, and the dataplane's
//!   `apply_update` (plan, render, `nft -f`), per node (each node runs its own agent: the
//!   slower node is the latency).
//! - rule, chain, set and element counts of each enforcing node's table; compile, render and
//!   full apply times.
//!
//! Not a `cargo bench` target on purpose: it needs root, `nft`, `conntrack` and `iperf3` and
//! runs for minutes, and `cargo test --all-targets` runs harness-less benches; an example is
//! only built by `cargo test` / `cargo clippy --all-targets`, and run on request.
//!
//! Traffic only flows between the lab's own namespaces; every connect and every child
//! process is bounded in time; the lab's namespaces are deleted when it drops (also on a
//! panic) and on SIGINT/SIGTERM.

#[path = "common/backends.rs"]
mod backends;

use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use backends::BenchBackend;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{setsockopt, sockopt};
use nix::time::{ClockId, clock_gettime};
use palisade_engine::{ClusterState, Endpoint, Flow, LiveState};
use palisade_ir::{Dataplane, NodeRuleset, RulesetDiff};
use palisade_lab::{Families, Lab, LabPod, LabSpec, ProbeOutcome};
use palisade_model::{
    Direction, IpBlock, IpFamily, Key, LabelSelector, Labels, Namespace, NetworkPolicy, Object,
    Operator, Peer, Pod, PortMatch, PortSpec, Protocol, Requirement, Rule,
};
use palisade_nft::{Config, NftExecutor, SystemNft, render_full};
use palisade_testkit::{GenParams, generate_cluster};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The port the connection loop targets (allowed by the bench's allow rules).
const CONN_PORT: u16 = 8080;
/// Served by the servers but allowed by no rule: the check that the table denies.
const DENIED_PORT: u16 = 8081;
const IPERF_PORT: u16 = 5201;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const WARMUP: Duration = Duration::from_millis(100);
/// The teams `generate_cluster` gives its namespaces (label `team`).
const TEAMS: [&str; 10] = [
    "payments", "search", "identity", "platform", "data", "web", "mobile", "ml", "ads", "billing",
];
const TIERS: [&str; 5] = ["frontend", "backend", "db", "cache", "queue"];
/// The lab nodes carrying the table.
const ENFORCING: [usize; 2] = [0, 1];

#[derive(Debug, Clone)]
struct Args {
    sizes: Vec<Size>,
    dense: bool,
    pods_per_node: usize,
    window: Duration,
    rounds: usize,
    iperf_secs: u32,
    iperf_rounds: usize,
    updates: usize,
    seed: u64,
    dump: Option<String>,
    /// Also measure the measured chains in the old one-lookup-per-rule layout.
    old_layout: bool,
    backends: Vec<BenchBackend>,
}

/// The full render of `rs` by `backend` (what `--dump` writes) and the objects it creates.
fn render(backend: BenchBackend, rs: &NodeRuleset) -> (String, KernelCounts) {
    match backend {
        BenchBackend::Nft => {
            let text = render_full(rs, &Config::default());
            let counts = kernel_counts(&text);
            (text, counts)
        }
        BenchBackend::IptablesNft | BenchBackend::IptablesLegacy => {
            let r = palisade_iptables::render_full(rs);
            let mut c = KernelCounts::default();
            for restore in &r.restore {
                c.chains += restore.lines().filter(|l| l.starts_with(':')).count();
                c.rules += restore.lines().filter(|l| l.starts_with("-A ")).count();
            }
            for line in r.ipset_before.lines().chain(r.ipset_after.lines()) {
                if line.starts_with("create PAL-") && !line.starts_with("create PAL-T-") {
                    c.sets += 1;
                } else if line.starts_with("add ") {
                    c.set_elements += 1;
                }
            }
            (r.text(), c)
        }
        // Map entries (both generations are written, so the kernel holds twice this).
        BenchBackend::Ebpf => (
            palisade_ebpf::render_full(rs),
            KernelCounts {
                map_elements: palisade_ebpf::entry_count(rs),
                ..KernelCounts::default()
            },
        ),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sizes: "0,100,1000,10000,10000:50"
            .split(',')
            .map(Size::parse)
            .collect::<Result<_, _>>()?,
        dense: false,
        pods_per_node: 200,
        window: Duration::from_millis(500),
        rounds: 12,
        iperf_secs: 5,
        iperf_rounds: 3,
        updates: 50,
        seed: 7,
        dump: None,
        old_layout: false,
        backends: vec![BenchBackend::Nft],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--dense" {
            a.dense = true;
            continue;
        }
        if flag == "--old-layout" {
            a.old_layout = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value
                    .split(',')
                    .map(Size::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--pods-per-node" => a.pods_per_node = (num(&value)? as usize).max(1),
            "--window-ms" => a.window = Duration::from_millis(num(&value)?.max(100)),
            "--rounds" => a.rounds = (num(&value)? as usize).max(1),
            "--iperf-secs" => a.iperf_secs = num(&value)?.min(30) as u32,
            "--iperf-rounds" => a.iperf_rounds = (num(&value)? as usize).max(1),
            "--updates" => a.updates = num(&value)? as usize,
            "--seed" => a.seed = num(&value)?,
            "--dump" => a.dump = Some(value),
            "--backends" | "--backend" => {
                a.backends = value
                    .split(',')
                    .map(|b| BenchBackend::parse(b).map_err(|e| format!("--backends: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// One configuration: `n` policies (and about as many pods), `m` non-matching policies
/// selecting each measured pod per direction.
#[derive(Debug, Clone, Copy)]
struct Size {
    n: usize,
    m: usize,
}

impl Size {
    /// `N` (M defaults to 20, 0 without policies) or `N:M`.
    fn parse(s: &str) -> Result<Size, String> {
        let num = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|e| format!("--sizes {s}: {e}"))
        };
        let (n, m) = match s.split_once(':') {
            Some((n, m)) => (num(n)?, num(m)?),
            None => {
                let n = num(s)?;
                (n, if n == 0 { 0 } else { 20 })
            }
        };
        // The bench namespace's own policies (1 + 2M + 2) count among the N.
        if n > 0 && 2 * m + 3 > n {
            return Err(format!(
                "--sizes {s}: {n} policies cannot hold 2 x {m} + 3 of the bench"
            ));
        }
        Ok(Size { n, m })
    }
}

// ---- object builders (local: the bench depends on the testkit's generator only) ----

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(pairs.iter().copied())
}

fn expr(mut s: LabelSelector, key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
    s.match_expressions.push(Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    });
    s
}

fn pods(pod_selector: LabelSelector) -> Peer {
    Peer::Pods {
        namespace_selector: None,
        pod_selector: Some(pod_selector),
    }
}

fn pods_in(namespace_selector: LabelSelector, pod_selector: LabelSelector) -> Peer {
    Peer::Pods {
        namespace_selector: Some(namespace_selector),
        pod_selector: Some(pod_selector),
    }
}

fn ip_block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock(IpBlock {
        cidr: cidr.parse().expect("CIDR"),
        except: except.iter().map(|e| e.parse().expect("CIDR")).collect(),
    })
}

fn tcp(port: u16) -> PortMatch {
    PortMatch {
        protocol: Protocol::Tcp,
        port: PortSpec::Range {
            from: port,
            to: port,
        },
    }
}

fn rule() -> Rule {
    Rule::default()
}

trait RuleExt {
    fn from(self, peer: Peer) -> Self;
    fn to(self, peer: Peer) -> Self;
    fn port(self, port: PortMatch) -> Self;
}

impl RuleExt for Rule {
    fn from(mut self, peer: Peer) -> Self {
        self.peers.push(peer);
        self
    }
    fn to(self, peer: Peer) -> Self {
        self.from(peer)
    }
    fn port(mut self, port: PortMatch) -> Self {
        self.ports.push(port);
        self
    }
}

/// A policy selecting every pod of `ns`, isolating ingress only until told otherwise.
fn policy(ns: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        key: Key::new(ns, name),
        pod_selector: LabelSelector::everything(),
        isolates_ingress: true,
        isolates_egress: false,
        ingress: Vec::new(),
        egress: Vec::new(),
        audit: false,
    }
}

trait PolicyExt {
    fn select(self, s: LabelSelector) -> Self;
    fn ingress(self, r: Rule) -> Self;
    /// Egress rules; `types` says whether ingress stays isolated.
    fn egress(self, r: Rule) -> Self;
    fn types(self, types: &[Direction]) -> Self;
}

impl PolicyExt for NetworkPolicy {
    fn select(mut self, s: LabelSelector) -> Self {
        self.pod_selector = s;
        self
    }
    fn ingress(mut self, r: Rule) -> Self {
        self.ingress.push(r);
        self
    }
    fn egress(mut self, r: Rule) -> Self {
        self.egress.push(r);
        self.isolates_egress = true;
        self
    }
    fn types(mut self, types: &[Direction]) -> Self {
        self.isolates_ingress = types.contains(&Direction::Ingress);
        self.isolates_egress = types.contains(&Direction::Egress);
        self
    }
}

// ---- the cluster of one size ----

/// Nodes the generated pods are spread over.
fn generated_nodes(n: usize, args: &Args) -> usize {
    if args.dense {
        2
    } else {
        n.div_ceil(args.pods_per_node).max(2)
    }
}

/// The bench namespace's objects: the two measured pods and, when `n > 0`, their policies.
fn bench_objects(lab: &Lab, pair: &Pair, size: Size) -> Vec<Object> {
    let pod = |k: &Key, pairs: &[(&str, &str)]| {
        let mut p = Pod::new(&k.namespace, &k.name, labels(pairs));
        p.ips = lab.pod_ips(k).to_vec();
        p.node = Some(lab.node_names()[lab.pod_node(k).expect("lab pod")].clone());
        p
    };
    let mut server_pod = pod(&pair.server, &[("app", "server"), ("tier", "backend")]);
    server_pod.ports = vec![palisade_model::ContainerPort {
        name: Some("http".into()),
        port: CONN_PORT,
        protocol: Protocol::Tcp,
    }];
    let mut out = vec![
        Object::Namespace(Namespace::new("bench", labels(&[("team", "bench")]))),
        Object::Pod(pod(
            &pair.client,
            &[("app", "client"), ("tier", "frontend")],
        )),
        Object::Pod(server_pod),
    ];
    if size.n == 0 {
        return out;
    }
    let m = size.m;
    let mut add = |p: NetworkPolicy| out.push(Object::NetworkPolicy(p));
    add(policy("bench", "default-deny").types(&[Direction::Ingress, Direction::Egress]));
    for i in 0..m {
        let team = TEAMS[i % TEAMS.len()];
        let tier = TIERS[(i / TEAMS.len()) % TIERS.len()];
        add(policy("bench", &format!("ingress-{i:03}"))
            .select(sel(&[("app", "server")]))
            .ingress(
                rule()
                    .from(pods_in(sel(&[("team", team)]), sel(&[("tier", tier)])))
                    .port(tcp(CONN_PORT)),
            ));
        let egress = if i % 3 == 2 {
            let except = format!("10.{}.0.0/16", i % 2 + 1);
            rule().to(ip_block("10.0.0.0/8", &[&except])).port(tcp(443))
        } else {
            rule()
                .to(pods_in(
                    expr(
                        sel(&[("team", team)]),
                        "env",
                        Operator::In,
                        &["prod", "staging"],
                    ),
                    sel(&[("tier", tier)]),
                ))
                .port(tcp(CONN_PORT))
        };
        add(policy("bench", &format!("egress-{i:03}"))
            .select(sel(&[("app", "client")]))
            .types(&[Direction::Egress])
            .egress(egress));
    }
    // `zz-`: sorted last, so the allowing rule is the last one of each chain.
    add(policy("bench", "zz-allow-from-client")
        .select(sel(&[("app", "server")]))
        .ingress(
            rule()
                .from(pods(sel(&[("app", "client")])))
                .port(tcp(CONN_PORT))
                .port(tcp(IPERF_PORT)),
        ));
    add(policy("bench", "zz-allow-to-server")
        .select(sel(&[("app", "client")]))
        .types(&[Direction::Egress])
        .egress(
            rule()
                .to(pods(sel(&[("app", "server")])))
                .port(tcp(CONN_PORT))
                .port(tcp(IPERF_PORT)),
        ));
    out
}

fn build_state(lab: &Lab, pair: &Pair, size: Size, args: &Args) -> ClusterState {
    let n = size.n;
    let bench = bench_objects(lab, pair, size);
    let mut objects = bench.clone();
    if n > 0 {
        let own = bench
            .iter()
            .filter(|o| matches!(o, Object::NetworkPolicy(_)))
            .count();
        objects.extend(generate_cluster(
            args.seed,
            GenParams {
                namespaces: (n / 20).max(2),
                pods: n,
                policies: n.saturating_sub(own),
                nodes: generated_nodes(n, args),
                dual_stack: false,
                addresses: true,
                terminal_ratio: 0.01,
            },
        ));
    }
    ClusterState::from_objects(&objects)
}

// ---- what the kernel holds ----

#[derive(Debug, Clone, Copy, Default)]
struct KernelCounts {
    chains: usize,
    rules: usize,
    sets: usize,
    set_elements: usize,
    map_elements: usize,
}

/// Counts the objects of a rendered full script (statements, one element per line
/// indented by a tab, see palisade-nft's render.rs). Sets and maps both count as sets;
/// elements of verdict maps (dispatch and class maps) as map elements.
fn kernel_counts(script: &str) -> KernelCounts {
    let mut c = KernelCounts::default();
    let mut in_map = false;
    for line in script.lines() {
        if line.starts_with('\t') {
            if in_map {
                c.map_elements += 1;
            } else {
                c.set_elements += 1;
            }
            continue;
        }
        if line.starts_with("add chain ") {
            c.chains += 1;
        } else if line.starts_with("add rule ") {
            c.rules += 1;
        } else if line.starts_with("add map ") || line.starts_with("add set ") {
            c.sets += 1;
            in_map = line.starts_with("add map ");
        }
    }
    c
}

// ---- measuring ----

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// What one window of the connection loop saw.
#[derive(Debug, Default, Clone)]
struct Connects {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    /// CPU time of the connecting thread: with no IRQ time accounting (this kernel), it
    /// includes the softirq work done on its stack, i.e. the whole forward path of the
    /// handshake through both nodes. Other processes on the machine do not inflate it.
    cpu: Duration,
    latencies: Vec<Duration>,
}

impl Connects {
    fn add(&mut self, other: Connects) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        self.latencies.extend(other.latencies);
    }
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Client-thread CPU per successful connection.
    fn cpu_per_connect(&self) -> Duration {
        self.cpu / u32::try_from(self.ok.max(1)).unwrap_or(u32::MAX)
    }
}

/// Sequential connects from inside `netns` for `window` (after a warm-up), each closed with a
/// reset. Runs on a thread of its own: only that thread enters the namespace.
fn connect_loop(netns: &str, to: SocketAddr, window: Duration) -> Result<Connects, String> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
            let linger = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let one = || {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT);
                let elapsed = t.elapsed();
                match r {
                    Ok(stream) => {
                        let _ = setsockopt(&stream, sockopt::Linger, &linger);
                        drop(stream);
                        Some(elapsed)
                    }
                    Err(_) => None,
                }
            };
            let warm = Instant::now();
            while warm.elapsed() < WARMUP {
                one();
            }
            let mut c = Connects::default();
            let cpu = || clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from);
            let cpu0 = cpu().map_err(|e| format!("thread CPU clock: {e}"))?;
            let start = Instant::now();
            while start.elapsed() < window {
                match one() {
                    Some(d) => {
                        c.ok += 1;
                        c.latencies.push(d);
                    }
                    None => c.failed += 1,
                }
            }
            c.elapsed = start.elapsed();
            c.cpu = cpu()
                .map_err(|e| format!("thread CPU clock: {e}"))?
                .saturating_sub(cpu0);
            Ok(c)
        })
        .join()
        .map_err(|_| "connect loop panicked".to_string())?
    })
}

/// Runs `args` with a bound; kills it when the bound passes.
fn run_bounded(args: &[&str], bound: Duration) -> Result<std::process::Output, String> {
    let child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    wait_bounded(child, bound).map_err(|e| format!("{}: {e}", args.join(" ")))
}

fn wait_bounded(mut child: Child, bound: Duration) -> Result<std::process::Output, String> {
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| e.to_string()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {bound:?}: killed"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, Copy)]
struct IperfRun {
    /// Bits per second received.
    bps: f64,
    retransmits: u64,
    /// CPU use of the iperf3 client process, percent of one CPU (iperf3's `host_total`): the
    /// sender's softirq work (the whole forward path) is charged to it.
    cpu: f64,
}

impl IperfRun {
    /// Gbit/s per CPU the sender used: throughput normalized by CPU, which the other load
    /// on this machine disturbs less than throughput alone.
    fn gbit_per_cpu(&self) -> f64 {
        self.bps / 1e9 / (self.cpu / 100.0)
    }
}

/// One iperf3 run, client netns -> server address.
fn iperf(client_ns: &str, server_ns: &str, server: IpAddr, secs: u32) -> Result<IperfRun, String> {
    let port = IPERF_PORT.to_string();
    // -1: the server exits after one test.
    let server_proc = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", &port,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 -s: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    let secs_s = secs.to_string();
    let ip = server.to_string();
    let out = run_bounded(
        &[
            "ip", "netns", "exec", client_ns, "iperf3", "-c", &ip, "-p", &port, "-t", &secs_s, "-J",
        ],
        Duration::from_secs(u64::from(secs) + 20),
    );
    let server_done = wait_bounded(server_proc, Duration::from_secs(5));
    let out = out?;
    let _ = server_done;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 -J output: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = v.get("error") {
        return Err(format!("iperf3: {err}"));
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3 -J: no end.sum_received.bits_per_second")?;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let cpu = v["end"]["cpu_utilization_percent"]["host_total"]
        .as_f64()
        .unwrap_or(f64::NAN);
    Ok(IperfRun {
        bps,
        retransmits,
        cpu,
    })
}

/// A client pod and the server pod it connects to.
#[derive(Debug, Clone)]
struct Pair {
    client: Key,
    server: Key,
    server_ip: IpAddr,
}

/// The lab, the dataplanes of the enforcing nodes (per backend) and the two pairs.
struct Bench {
    lab: Lab,
    enforced: Pair,
    baseline: Pair,
    backends: Vec<BenchBackend>,
    /// Per backend (as in `backends`), one dataplane per enforcing node.
    dataplanes: Vec<Vec<Box<dyn Dataplane>>>,
    /// The backend whose rules the enforcing nodes hold.
    active: Option<usize>,
}

impl Bench {
    fn create(backends: &[BenchBackend]) -> Result<Bench, String> {
        let key = |s: &str| s.parse::<Key>();
        let served = [(CONN_PORT, Protocol::Tcp), (DENIED_PORT, Protocol::Tcp)];
        let spec = LabSpec {
            nodes: 4,
            pods: vec![
                LabPod::new(key("bench/client")?).on_node(0),
                LabPod::new(key("bench/server")?)
                    .on_node(1)
                    .with_ports(served),
                LabPod::new(key("base/client")?).on_node(2),
                LabPod::new(key("base/server")?)
                    .on_node(3)
                    .with_ports(served),
            ],
            families: Families::V4_ONLY,
        };
        let lab = Lab::create(spec).map_err(|e| e.to_string())?;
        let pair = |c: &str, s: &str| -> Result<Pair, String> {
            let server = key(s)?;
            let server_ip = lab.pod_ip(&server, IpFamily::V4).ok_or("no IPv4")?;
            Ok(Pair {
                client: key(c)?,
                server,
                server_ip,
            })
        };
        let enforced = pair("bench/client", "bench/server")?;
        let baseline = pair("base/client", "base/server")?;
        // More source ports for the connection loops (inside the clients' own netns).
        for client in [&enforced.client, &baseline.client] {
            let range = "net.ipv4.ip_local_port_range=1024 65000";
            let out = lab
                .run_in_pod(client, &["sysctl", "-q", "-w", range], None)
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("sysctl: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        let dataplanes = backends
            .iter()
            .map(|backend| {
                ENFORCING
                    .iter()
                    .map(|&i| backend.make(lab.node_netns(i), None))
                    .collect()
            })
            .collect();
        Ok(Bench {
            lab,
            enforced,
            baseline,
            backends: backends.to_vec(),
            dataplanes,
            active: None,
        })
    }

    /// Makes backend `k` the one on the enforcing nodes: the previous one's rules are
    /// removed first (two backends would both filter).
    fn activate(&mut self, k: usize) -> Result<(), String> {
        if let Some(previous) = self.active
            && previous != k
        {
            for d in &mut self.dataplanes[previous] {
                d.remove().map_err(|e| e.to_string())?;
            }
            // Removing a large ruleset keeps the kernel busy for a while after the command.
            std::thread::sleep(Duration::from_secs(2));
        }
        self.active = Some(k);
        Ok(())
    }

    fn node_name(&self, i: usize) -> String {
        self.lab.node_names()[ENFORCING[i]].clone()
    }

    /// Full apply of backend `k` on every enforcing node; returns each node's time.
    fn apply_all(&mut self, k: usize, rulesets: &[NodeRuleset]) -> Result<Vec<Duration>, String> {
        self.activate(k)?;
        let mut times = Vec::new();
        for (d, rs) in self.dataplanes[k].iter_mut().zip(rulesets) {
            let t = Instant::now();
            d.apply_full(rs).map_err(|e| e.to_string())?;
            times.push(t.elapsed());
        }
        Ok(times)
    }

    fn flush_conntrack(&self) -> Result<(), String> {
        for &i in &ENFORCING {
            let out = self
                .lab
                .run_in_node(i, &["conntrack", "-F"], None)
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "conntrack -F: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    fn probe(&self, pair: &Pair, port: u16, timeout: Duration) -> ProbeOutcome {
        self.lab
            .probe(&pair.client, pair.server_ip, port, Protocol::Tcp, timeout)
    }

    /// The connection loop from the pair's client to its server's allowed port.
    fn connects(&self, pair: &Pair, window: Duration) -> Result<Connects, String> {
        let ns = self.lab.pod_netns(&pair.client).ok_or("client netns")?;
        connect_loop(ns, SocketAddr::new(pair.server_ip, CONN_PORT), window)
    }

    /// `rounds` window pairs, enforced and baseline, the order alternating every round.
    fn compare(&self, args: &Args, label: &str) -> Result<Comparison, String> {
        let mut c = Comparison::default();
        for round in 0..args.rounds {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            let mut rates = (0.0, 0.0);
            for enforced in order {
                if enforced {
                    self.flush_conntrack()?;
                    let w = self.connects(&self.enforced, args.window)?;
                    rates.1 = w.rate();
                    c.enforced.add(w);
                } else {
                    let w = self.connects(&self.baseline, args.window)?;
                    rates.0 = w.rate();
                    c.baseline.add(w);
                }
            }
            eprintln!(
                "{label} round {round}: baseline {:.0}/s, enforced {:.0}/s ({:.3}x)",
                rates.0,
                rates.1,
                rates.1 / rates.0
            );
            c.rounds.push(rates);
        }
        Ok(c)
    }
}

/// Interleaved windows on the enforced and the baseline pair.
#[derive(Debug, Default)]
struct Comparison {
    baseline: Connects,
    enforced: Connects,
    /// (baseline, enforced) connections per second of each round.
    rounds: Vec<(f64, f64)>,
}

impl Comparison {
    fn ratio(&self) -> f64 {
        self.enforced.rate() / self.baseline.rate()
    }

    /// Baseline CPU per connection over enforced CPU per connection: the rate ratio of a
    /// CPU-bound client, free of the other load on the machine.
    fn cpu_ratio(&self) -> f64 {
        self.baseline.cpu_per_connect().as_secs_f64()
            / self.enforced.cpu_per_connect().as_secs_f64().max(1e-12)
    }

    fn median_round_ratio(&self) -> f64 {
        let mut r: Vec<f64> = self.rounds.iter().map(|(b, e)| e / b).collect();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

#[derive(Debug, Default)]
struct SizeResult {
    backend: &'static str,
    pods: usize,
    policies: usize,
    nodes: usize,
    m: usize,
    ir: Vec<palisade_ir::RulesetStats>,
    kernel: Vec<KernelCounts>,
    compile: Vec<Duration>,
    render_full: Vec<Duration>,
    full_apply: Vec<Duration>,
    /// A second full apply onto the same rules (the periodic resync).
    resync: Vec<Duration>,
    cmp: Comparison,
    /// The old layout on the measured chains (with `--old-layout`).
    old_layout: Option<(usize, Comparison)>,
}

fn measure_size(
    b: &mut Bench,
    args: &Args,
    size: Size,
) -> Result<(Vec<SizeResult>, ClusterState, Vec<NodeRuleset>), String> {
    let n = size.n;
    let t = Instant::now();
    let state = build_state(&b.lab, &b.enforced, size, args);
    eprintln!("size {n}: engine state built in {} ms", ms(t.elapsed()));
    // The engine must agree that the measured flow is allowed.
    let flow = Flow {
        src: Endpoint::Pod(b.enforced.client.clone()),
        dst: Endpoint::Pod(b.enforced.server.clone()),
        protocol: Protocol::Tcp,
        port: CONN_PORT,
        family: Some(IpFamily::V4),
    };
    let explanation = state.explain(&flow).map_err(|e| e.to_string())?;
    if !explanation.allowed() {
        return Err(format!(
            "size {n}: the engine denies the measured flow:\n{explanation}"
        ));
    }
    let mut rulesets = Vec::new();
    let mut compile = Vec::new();
    for i in 0..ENFORCING.len() {
        let t = Instant::now();
        let rs = state.compile_node(&b.node_name(i));
        compile.push(t.elapsed());
        rulesets.push(rs);
    }
    let mut results = Vec::new();
    for k in 0..b.backends.len() {
        let backend = b.backends[k];
        let name = backend.name();
        let mut r = SizeResult {
            backend: name,
            pods: state.pod_count(),
            policies: state.policy_count(),
            nodes: if n == 0 { 2 } else { generated_nodes(n, args) },
            m: size.m,
            compile: compile.clone(),
            ..SizeResult::default()
        };
        for rs in &rulesets {
            let t = Instant::now();
            let (_, counts) = render(backend, rs);
            r.render_full.push(t.elapsed());
            r.kernel.push(counts);
            r.ir.push(rs.stats());
        }
        r.full_apply = b.apply_all(k, &rulesets)?;
        eprintln!(
            "size {n} {name}: compiled in {:?} ms, full apply in {:?} ms, kernel {:?}",
            r.compile.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            r.full_apply.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            r.kernel
        );
        // A second full apply onto what is there: the periodic resync.
        let again = b.apply_all(k, &rulesets)?;
        eprintln!(
            "size {n} {name}: full apply again (resync) in {:?} ms",
            again.iter().map(|d| ms(*d)).collect::<Vec<_>>()
        );
        r.resync = again;
        // Sanity: the allowed port connects; with policies, the other served port is
        // dropped on the enforced pair and not on the baseline pair.
        let ok = b.probe(&b.enforced, CONN_PORT, Duration::from_secs(2));
        if !ok.is_connected() {
            return Err(format!(
                "size {n} {name}: the allowed flow does not connect through the rules: {ok}"
            ));
        }
        if n > 0 {
            let denied = b.probe(&b.enforced, DENIED_PORT, Duration::from_millis(500));
            if denied != ProbeOutcome::TimedOut {
                return Err(format!(
                    "size {n} {name}: port {DENIED_PORT} should be dropped, got {denied}"
                ));
            }
        }
        let open = b.probe(&b.baseline, DENIED_PORT, Duration::from_secs(2));
        if !open.is_connected() {
            return Err(format!(
                "size {n}: the baseline pair does not connect: {open}"
            ));
        }
        r.cmp = b.compare(args, &format!("size {n} {name}"))?;
        if args.old_layout && n > 0 && backend == BenchBackend::Nft {
            let mut elements = 0;
            let ends = [
                (0, &b.enforced.client, palisade_ir::Direction::Egress),
                (1, &b.enforced.server, palisade_ir::Direction::Ingress),
            ];
            for (i, pod, direction) in ends {
                let (script, count) = old_layout_script(&rulesets[i], &pod.to_string(), direction)?;
                elements += count;
                SystemNft::in_netns(b.lab.node_netns(ENFORCING[i]))
                    .run(&script)
                    .map_err(|e| e.to_string())?;
            }
            let ok = b.probe(&b.enforced, CONN_PORT, Duration::from_secs(2));
            let denied = b.probe(&b.enforced, DENIED_PORT, Duration::from_millis(500));
            if !ok.is_connected() || denied != ProbeOutcome::TimedOut {
                return Err(format!(
                    "size {n}: old-layout chains: allowed {ok}, denied {denied}"
                ));
            }
            r.old_layout = Some((elements, b.compare(args, &format!("size {n} old layout"))?));
            b.apply_all(k, &rulesets)?;
        }
        results.push(r);
    }
    Ok((results, state, rulesets))
}

// ---- the old layout: one set lookup per rule ----

/// The script that turns an endpoint's chain back into the layout nft had before v2: one
/// rule per IR rule, each with its own interval set of peers (and of ports), then the
/// default drop: a new connection walks one lookup per rule. IPv4 only (the bench is).
/// Returns the script and its element count.
fn old_layout_script(
    rs: &NodeRuleset,
    endpoint: &str,
    direction: palisade_ir::Direction,
) -> Result<(String, usize), String> {
    use palisade_ir::{PeerMatch, PortMatch};
    let ep = rs
        .endpoints
        .get(endpoint)
        .ok_or_else(|| format!("no endpoint {endpoint}"))?;
    let rules = ep.direction(direction);
    let chain = palisade_nft_chain_name(rs, endpoint, direction)?;
    let (field, verdict) = match direction {
        palisade_ir::Direction::Ingress => ("saddr", "accept"),
        palisade_ir::Direction::Egress => ("daddr", "return"),
    };
    let mut s = format!("flush chain inet palisade {chain}\n");
    let mut count = 0;
    for (i, rule) in rules.rules.iter().enumerate() {
        let tag = format!("old_{}_{i}", direction.as_str());
        let peer = match &rule.peers {
            PeerMatch::Any => String::new(),
            PeerMatch::Set(n) => {
                let elements: Vec<String> = rs.peer_sets[n]
                    .ranges(false)
                    .iter()
                    .map(|r| format!("{}-{}", r.first, r.last))
                    .collect();
                count += elements.len();
                let _ = writeln!(
                    s,
                    "add set inet palisade {tag}_peers {{ type ipv4_addr; flags interval; }}"
                );
                if !elements.is_empty() {
                    let _ = writeln!(
                        s,
                        "add element inet palisade {tag}_peers {{ {} }}",
                        elements.join(", ")
                    );
                }
                format!("ip {field} @{tag}_peers ")
            }
        };
        let port = match &rule.ports {
            PortMatch::Any => String::new(),
            PortMatch::Set(n) => {
                let elements: Vec<String> = rs.port_sets[n]
                    .ranges
                    .iter()
                    .map(|p| format!("{} . {}-{}", p.protocol.as_str(), p.first, p.last))
                    .collect();
                count += elements.len();
                let _ = writeln!(
                    s,
                    "add set inet palisade {tag}_ports {{ type inet_proto . inet_service; flags interval; elements = {{ {} }} }}",
                    elements.join(", ")
                );
                format!("meta l4proto . th dport @{tag}_ports ")
            }
        };
        let _ = writeln!(
            s,
            "add rule inet palisade {chain} {peer}{port}counter {verdict}"
        );
    }
    let _ = writeln!(s, "add rule inet palisade {chain} counter drop");
    Ok((s, count))
}

/// The backend's chain for an endpoint and direction, read off the dispatch map of a full
/// render (the naming is the backend's own business).
fn palisade_nft_chain_name(
    rs: &NodeRuleset,
    endpoint: &str,
    direction: palisade_ir::Direction,
) -> Result<String, String> {
    let ep = rs
        .endpoints
        .get(endpoint)
        .ok_or_else(|| format!("no endpoint {endpoint}"))?;
    let ip = ep.ips.iter().find(|ip| ip.is_ipv4()).ok_or("no IPv4")?;
    let wanted = format!("{ip} : jump {}_", direction.as_str());
    render_full(rs, &Config::default())
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&wanted))
        .and_then(|l| l.split("jump ").nth(1))
        .map(|c| c.trim_end_matches(',').to_string())
        .ok_or_else(|| format!("no chain for {endpoint} {}", direction.as_str()))
}

// ---- updates at the largest size ----

#[derive(Debug, Default)]
struct UpdateSamples {
    upsert: Vec<Duration>,
    compile: Vec<Duration>,
    render: Vec<Duration>,
    nft: Vec<Duration>,
    /// Upsert plus the slower node's compile + render + nft: the change-to-kernel latency.
    total: Vec<Duration>,
    ops: Vec<usize>,
    /// Changes that left every table as it was (not counted above: nothing reached the kernel).
    noops: usize,
}

fn measure_updates(
    b: &mut Bench,
    k: usize,
    state: &mut ClusterState,
    rulesets: &mut [NodeRuleset],
    args: &Args,
) -> Result<(UpdateSamples, UpdateSamples), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed);
    let (mut relabels, mut adds) = (UpdateSamples::default(), UpdateSamples::default());
    let local: Vec<String> = (0..ENFORCING.len()).map(|i| b.node_name(i)).collect();
    // Pods on the enforcing nodes: a change to them always reaches at least one table.
    let movable: Vec<Key> = state
        .pods()
        .into_iter()
        .filter(|p| {
            !p.host_network
                && p.key.namespace != "bench"
                && p.labels.contains_key("app")
                && p.node.as_ref().is_some_and(|n| local.contains(n))
        })
        .map(|p| p.key.clone())
        .collect();
    if movable.is_empty() {
        return Err("no pods to relabel".into());
    }
    // As the agent runs it: incremental engine state, and a dataplane per node that keeps
    // the plan it applied (seeded by one full apply of what the tables already hold).
    let mut live = LiveState::from_state(std::mem::take(state));
    b.activate(k)?;
    let mut dataplanes: Vec<Box<dyn Dataplane>> = Vec::new();
    for (i, &node) in ENFORCING.iter().enumerate() {
        let mut dp = b.backends[k].make(b.lab.node_netns(node), None);
        dp.apply_full(&rulesets[i]).map_err(|e| e.to_string())?;
        dataplanes.push(dp);
    }
    // Until each kind has `updates` changes that reached a kernel (bounded).
    for u in 0..8 * args.updates.max(1) {
        let (r, a) = (relabels.total.len(), adds.total.len());
        if r >= args.updates && a >= args.updates {
            break;
        }
        let relabel = a >= args.updates || (r < args.updates && r <= a);
        let target = movable.choose(&mut rng).expect("non-empty").clone();
        let mut pod = live.state().pod(&target).expect("pod").clone();
        let apps: Vec<String> = live
            .state()
            .pods_in_namespace(&target.namespace)
            .filter_map(|p| p.labels.get("app").cloned())
            .collect();
        let change = if relabel {
            let others: Vec<&String> = apps
                .iter()
                .filter(|a| Some(*a) != pod.labels.get("app"))
                .collect();
            match others.choose(&mut rng) {
                Some(a) => {
                    pod.labels.insert("app".into(), (*a).clone());
                }
                None => {
                    if pod.labels.remove("canary").is_none() {
                        pod.labels.insert("canary".into(), "true".into());
                    }
                }
            }
            Object::Pod(pod)
        } else {
            let app = pod.labels.get("app").cloned().unwrap_or_default();
            let from = apps
                .choose(&mut rng)
                .cloned()
                .unwrap_or_else(|| app.clone());
            let team = TEAMS[rng.random_range(0..TEAMS.len())];
            Object::NetworkPolicy(
                policy(&target.namespace, &format!("bench-added-{u}"))
                    .select(sel(&[("app", &app)]))
                    .ingress(
                        rule()
                            .from(pods(sel(&[("app", &from)])))
                            .from(pods_in(
                                sel(&[("team", team)]),
                                expr(sel(&[]), "app", Operator::Exists, &[]),
                            ))
                            .port(tcp(8080)),
                    ),
            )
        };
        // The change, into the engine.
        let t = Instant::now();
        live.apply(change);
        let upsert = t.elapsed();
        // Each node: compile, diff, apply (nodes run their own agents: the slower counts).
        let mut worst = (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0usize);
        let mut commands = 0;
        for (i, dp) in dataplanes.iter_mut().enumerate() {
            let t0 = Instant::now();
            let desired = live.compile_node(&local[i]);
            let t1 = Instant::now();
            let diff = RulesetDiff::between(&rulesets[i], &desired);
            let t2 = Instant::now();
            let mut ops = 0;
            if !diff.is_empty() {
                let report = dp
                    .apply_update(&rulesets[i], &desired, &diff)
                    .map_err(|e| format!("update {u}: {e}"))?;
                if report.full {
                    return Err(format!(
                        "update {u}: the kernel rejected the update (fell back to full)"
                    ));
                }
                ops = report.operations;
            }
            commands += ops;
            let t3 = Instant::now();
            if (t3 - t0) > worst.0 + worst.1 + worst.2 {
                worst = (t1 - t0, t2 - t1, t3 - t2, ops);
            }
            rulesets[i] = desired;
        }
        let s = if relabel { &mut relabels } else { &mut adds };
        if commands == 0 {
            s.noops += 1;
            continue;
        }
        s.upsert.push(upsert);
        s.compile.push(worst.0);
        s.render.push(worst.1);
        s.nft.push(worst.2);
        s.total.push(upsert + worst.0 + worst.1 + worst.2);
        s.ops.push(worst.3);
        eprintln!(
            "update {u} ({}): compile {} ms, diff {} ms, apply {} ms, {} operations",
            if relabel { "relabel" } else { "policy add" },
            ms(worst.0),
            ms(worst.1),
            ms(worst.2),
            worst.3
        );
    }
    // The measured flow still passes after every update.
    let ok = b.probe(&b.enforced, CONN_PORT, Duration::from_secs(2));
    if !ok.is_connected() {
        return Err(format!("after the updates the measured flow fails: {ok}"));
    }
    *state = live.into_state();
    Ok((relabels, adds))
}

// ---- report ----

fn latency_cells(c: &Comparison) -> (String, String) {
    let mut b = c.baseline.latencies.clone();
    let mut e = c.enforced.latencies.clone();
    b.sort();
    e.sort();
    (
        format!("{} / {}", us(percentile(&b, 0.5)), us(percentile(&e, 0.5))),
        format!(
            "{} / {}",
            us(percentile(&b, 0.99)),
            us(percentile(&e, 0.99))
        ),
    )
}

fn report_sizes(calibration: &Comparison, results: &[SizeResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| policies | pods | nodes | M | conn/s baseline | conn/s enforced | wall ratio (median of rounds) | client CPU µs/conn base / enf | **CPU ratio** | connect p50 base / enf (µs) | connect p99 base / enf (µs) | failed |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|---:|"
    );
    let row = |s: &mut String,
               label: String,
               pods: usize,
               nodes: usize,
               m: String,
               c: &Comparison| {
        let (p50, p99) = latency_cells(c);
        let _ = writeln!(
            s,
            "| {label} | {pods} | {nodes} | {m} | {:.0} | {:.0} | {:.3} ({:.3}) | {:.1} / {:.1} | **{:.3}** | {p50} | {p99} | {} |",
            c.baseline.rate(),
            c.enforced.rate(),
            c.ratio(),
            c.median_round_ratio(),
            c.baseline.cpu_per_connect().as_secs_f64() * 1e6,
            c.enforced.cpu_per_connect().as_secs_f64() * 1e6,
            c.cpu_ratio(),
            c.baseline.failed + c.enforced.failed,
        );
    };
    row(
        &mut s,
        "A/A: no table".into(),
        2,
        4,
        "-".into(),
        calibration,
    );
    for r in results {
        row(
            &mut s,
            format!("{} ({})", r.policies, r.backend),
            r.pods,
            r.nodes,
            r.m.to_string(),
            &r.cmp,
        );
        if let Some((elements, c)) = &r.old_layout {
            let label = format!(
                "{} (old layout: one lookup per rule, {elements} elements)",
                r.policies
            );
            row(&mut s, label, r.pods, r.nodes, r.m.to_string(), c);
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| policies | backend | node | endpoints | IR rules | IR peer sets | chains | rules | sets | set elements | map elements | compile (ms) | render full (ms) | full apply (ms) | full apply again, resync (ms) |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        for (i, (ir, k)) in r.ir.iter().zip(&r.kernel).enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {i} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.policies,
                r.backend,
                ir.endpoints,
                ir.rules,
                ir.peer_sets,
                k.chains,
                k.rules,
                k.sets,
                k.set_elements,
                k.map_elements,
                ms(r.compile[i]),
                ms(r.render_full[i]),
                ms(r.full_apply[i]),
                r.resync.get(i).map_or("-".to_string(), |d| ms(*d)),
            );
        }
    }
    s
}

fn report_updates(name: &str, u: &UpdateSamples) -> String {
    let row = |label: &str, v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        format!(
            "| {name} | {label} | {} | {} | {} |\n",
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        )
    };
    let mut s = String::new();
    s.push_str(&row("engine upsert", &u.upsert));
    s.push_str(&row("compile node", &u.compile));
    s.push_str(&row("IR diff", &u.render));
    s.push_str(&row("apply (plan, render, kernel)", &u.nft));
    s.push_str(&row("**total**", &u.total));
    let _ = writeln!(
        s,
        "| {name} | changes counted (skipped: left both tables unchanged) | {} ({}) | | |",
        u.total.len(),
        u.noops
    );
    let mut ops = u.ops.clone();
    ops.sort();
    let _ = writeln!(
        s,
        "| {name} | kernel operations | {} | {} | {} |",
        ops.get(ops.len() / 2).copied().unwrap_or(0),
        ops.get((ops.len() * 99 / 100).min(ops.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0),
        ops.last().copied().unwrap_or(0)
    );
    s
}

fn environment() -> String {
    let first_line = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "kernel {}, {}, {}, {}, {}, {}, {} CPUs",
        first_line(&["uname", "-r"]),
        first_line(&["nft", "--version"]),
        first_line(&["iptables-legacy", "--version"]),
        first_line(&["iptables-nft", "--version"]),
        first_line(&["ipset", "--version"]),
        first_line(&["iperf3", "--version"]),
        std::thread::available_parallelism().map_or(0, usize::from)
    )
}

fn dump(b: &Bench, args: &Args, dir: &str) -> Result<String, String> {
    for &size in &args.sizes {
        let n = size.n;
        let state = build_state(&b.lab, &b.enforced, size, args);
        let rs = state.compile_node(&b.node_name(0));
        for backend in &args.backends {
            let (text, counts) = render(*backend, &rs);
            eprintln!(
                "size {n} {}: IR {:?}, kernel {:?}",
                backend.name(),
                rs.stats(),
                counts
            );
            std::fs::write(format!("{dir}/full-{n}.{}", backend.name()), text)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(format!("scripts written to {dir}"))
}

/// Rounds of iperf3 on both pairs, the order alternating: (enforced?, run).
fn iperf_rows(b: &Bench, args: &Args, label: &str) -> Result<Vec<(bool, IperfRun)>, String> {
    let mut rows = Vec::new();
    for round in 0..args.iperf_rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for enforced in order {
            let pair = if enforced { &b.enforced } else { &b.baseline };
            let client_ns = b.lab.pod_netns(&pair.client).ok_or("client netns")?;
            let server_ns = b.lab.pod_netns(&pair.server).ok_or("server netns")?;
            if enforced {
                b.flush_conntrack()?;
            }
            let run = iperf(client_ns, server_ns, pair.server_ip, args.iperf_secs)?;
            eprintln!(
                "iperf3 {label} {} round {round}: {:.2} Gbit/s, {:.0}% CPU, {} retransmits",
                if enforced { "enforced" } else { "baseline" },
                run.bps / 1e9,
                run.cpu,
                run.retransmits
            );
            rows.push((enforced, run));
        }
    }
    Ok(rows)
}

fn report_iperf(out: &mut String, label: &str, rows: &[(bool, IperfRun)]) {
    let mean = |e: bool, f: &dyn Fn(&IperfRun) -> f64| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == e).map(|r| f(&r.1)).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    for (e, r) in rows {
        let _ = writeln!(
            out,
            "| {label} | {} | {:.2} | {:.0} | {:.2} | {} |",
            if *e { "enforced" } else { "baseline" },
            r.bps / 1e9,
            r.cpu,
            r.gbit_per_cpu(),
            r.retransmits
        );
    }
    let _ = writeln!(
        out,
        "| {label} | **ratio of means** | **{:.3}** | | **{:.3}** | |",
        mean(true, &|r| r.bps) / mean(false, &|r| r.bps),
        mean(true, &|r| r.gbit_per_cpu()) / mean(false, &|r| r.gbit_per_cpu()),
    );
}

fn run(args: &Args) -> Result<String, String> {
    let mut b = Bench::create(&args.backends)?;
    if let Some(dir) = &args.dump {
        return dump(&b, args, dir);
    }
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", environment());
    let _ = writeln!(out, "### Connections and table sizes\n");
    let calibration = b.compare(args, "A/A calibration")?;
    let mut results = Vec::new();
    let mut last = None;
    for &size in &args.sizes {
        let (r, state, rulesets) = measure_size(&mut b, args, size)?;
        results.extend(r);
        last = Some((size.n, state, rulesets));
    }
    out.push_str(&report_sizes(&calibration, &results));
    let (n, state, rulesets) = last.ok_or("no sizes")?;

    if args.iperf_secs > 0 {
        let _ = writeln!(
            out,
            "\n### One long TCP flow (iperf3 -t {}, {n} policies)\n",
            args.iperf_secs
        );
        let _ = writeln!(
            out,
            "| table | run | Gbit/s | sender CPU % | Gbit/s per CPU | retransmits |\n|---|---|---:|---:|---:|---:|"
        );
        for k in 0..b.backends.len() {
            b.apply_all(k, &rulesets)?;
            let label = b.backends[k].name();
            let rows = iperf_rows(&b, args, label)?;
            report_iperf(&mut out, label, &rows);
        }
    }

    if args.updates > 0 {
        for k in 0..b.backends.len() {
            // Every backend starts from the same state and draws the same changes.
            let (mut st, mut rs) = (state.clone(), rulesets.clone());
            let (relabels, adds) = measure_updates(&mut b, k, &mut st, &mut rs, args)?;
            let _ = writeln!(
                out,
                "\n### Change to kernel at {n} policies, {} ({} updates of each kind; per update, the slower node)\n",
                b.backends[k].name(),
                args.updates
            );
            let _ = writeln!(
                out,
                "| change | phase | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---:|---:|---:|"
            );
            out.push_str(&report_updates("pod relabel", &relabels));
            out.push_str(&report_updates("policy add", &adds));
        }
    }
    let _ = writeln!(out, "\nwhole run: {:.0} s", started.elapsed().as_secs_f64());
    b.lab.destroy().map_err(|e| e.to_string())?;
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dataplane_bench: {e}");
            return ExitCode::from(2);
        }
    };
    if !palisade_lab::can_run_root_tests(true) {
        return ExitCode::from(2);
    }
    for tool in ["conntrack", "iperf3"] {
        if tool == "iperf3" && args.iperf_secs == 0 {
            continue;
        }
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("dataplane_bench: `{tool}` is missing (apt-get install -y {tool})");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = palisade_lab::install_signal_cleanup() {
        eprintln!("dataplane_bench: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("dataplane_bench: {args:?}");
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dataplane_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
