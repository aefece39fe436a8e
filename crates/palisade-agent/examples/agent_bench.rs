//! Benchmark of the node agent against a real kube-apiserver (root only). Results and the
//! commands that produced them: BENCHMARKS.md, "Agent (against a real kube-apiserver)".
//!
//! ```text
//! cargo run --release -p palisade-agent --example agent_bench -- [options]
//!   --scale 10000        generated pods, and as many NetworkPolicies, cluster-wide
//!   --nodes N            virtual nodes the generated pods spread over
//!                        (default scale/100: about 100 pods on the agent's node)
//!   --namespaces N       generated namespaces (default scale/20, at least 2)
//!   --events 100         measured events of each kind
//!   --concurrency 32     API writes in flight while creating the cluster
//!   --probe-timeout-ms 5 bound of one connect attempt of the flip loop
//!   --seed 42            seed of the generated cluster
//!   --agent-arg ARG      extra flag for `palisade agent` (repeatable)
//! ```
//!
//! What runs: etcd and kube-apiserver built from source (`palisade_kubetest::ControlPlane`,
//! loopback only), a one-node lab (`palisade_lab`) holding two real pods, `bench/client` and
//! `bench/server`, and one real `palisade agent` process for that node (`node-0`), with the
//! identity deploy/ grants, applying its nft rules in the node's namespace.
//!
//! 1. The cluster: `palisade_testkit::generate_cluster(seed, ...)` (namespaces of teams and
//!    environments, apps with replicas and named ports, the policies people write), turned
//!    into API objects (checked to convert back to the same model objects) and created with
//!    the admin client, `--concurrency` writes in flight: namespaces, then pods (create,
//!    then `pods/status` Running with the addresses, as kubelet does) and policies. The
//!    generated pods are spread over `--nodes` virtual nodes; those on `node-0` (the
//!    agent's) are enforced by the agent like the lab pods, but carry no traffic.
//! 2. The agent starts only then: its initial full sync (three lists, compile, a full nft
//!    apply) is timed from the process start to `/readyz` 200, and its memory read from
//!    `/proc/<pid>/status` (VmRSS, VmHWM).
//! 3. Events, one at a time, each a flow from denied to allowed: (a) the client gets the
//!    label a policy admits on port 8080 (`bench/allow-granted`); (b) a policy admitting the
//!    client on port 8081 is created. End to end is timed from just before the API write to
//!    the end of the first TCP handshake that gets through: a thread inside the client's
//!    namespace connects to the server back to back, each attempt bounded by
//!    `--probe-timeout-ms` (a denied SYN is dropped, so that bound is the resolution). For the
//!    same event the agent's own figure is read from its /metrics: the `_sum` increase of
//!    `palisade_event_to_applied_seconds` (watch arrival -> rules in the kernel) and of
//!    `palisade_sync_duration_seconds` (compile + apply) while only that event was in flight,
//!    and a second watcher in the bench (the admin client, on the bench namespace) times
//!    the API server's part: write -> watch event delivered.
//!    Each event is undone (label removed, policy deleted) and the flow seen denied again
//!    before the next one.
//!
//! Not a test: it needs root, nft and the kube-apiserver/etcd binaries, and runs for
//! minutes. Traffic flows only to 127.0.0.1 (the API server) and between the lab's own
//! namespaces; every wait is bounded; the agent, API server, etcd, the lab's namespaces and
//! the temporary folder are removed when the run ends, fails, or gets SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod as ApiPod;
use k8s_openapi::api::networking::v1::NetworkPolicy as ApiPolicy;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use palisade_kubetest::error::Context;
use palisade_kubetest::{
    Admin, Agent, Error, LabCluster, LabClusterSpec, PodPort, Result, in_netns, labels,
};
use palisade_lab::{Families, LabPod, LabSpec, ProbeOutcome};
use palisade_model::{
    IpFamily, Key, LabelSelector, Namespace, NetworkPolicy, Object, Operator, Peer, Pod, PodPhase,
    PortMatch, PortSpec, Protocol, Rule,
};
use palisade_testkit::{GenParams, generate_cluster};
use serde_json::{Map, Value, json};

/// The bench's own namespace, and its two lab pods.
const BENCH_NS: &str = "bench";
/// Flipped by the label events (policy `bench/allow-granted`).
const LABEL_PORT: u16 = 8080;
/// Flipped by the policy events (policies `bench/allow-client-<i>`).
const POLICY_PORT: u16 = 8081;
/// The label that admits the client on [`LABEL_PORT`].
const GRANT: (&str, &str) = ("access", "granted");

/// Longest wait for one flip to show in the packets (one apply of 1,000 local endpoints with
/// ~500,000 kernel set elements took 5 s).
const FLIP_DEADLINE: Duration = Duration::from_secs(15);
/// Longest wait for the agent to apply one event.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Longest wait for the agent's first full sync.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Args {
    scale: usize,
    nodes: usize,
    namespaces: usize,
    events: usize,
    concurrency: usize,
    probe_timeout: Duration,
    seed: u64,
    agent_args: Vec<String>,
}

fn usage() -> &'static str {
    "usage: agent_bench [--scale N] [--nodes N] [--namespaces N] [--events N] \
     [--concurrency N] [--probe-timeout-ms N] [--seed N] [--agent-arg ARG]..."
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut scale = 10_000;
    let mut nodes = None;
    let mut namespaces = None;
    let mut events = 100;
    let mut concurrency = 32;
    let mut probe_ms = 5;
    let mut seed = 42;
    let mut agent_args = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(usage().into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--scale" => scale = number()? as usize,
            "--nodes" => nodes = Some(number()? as usize),
            "--namespaces" => namespaces = Some(number()? as usize),
            "--events" => events = number()? as usize,
            "--concurrency" => concurrency = number()?.max(1) as usize,
            "--probe-timeout-ms" => probe_ms = number()?.max(1),
            "--seed" => seed = number()?,
            "--agent-arg" => agent_args.push(value),
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    Ok(Args {
        scale,
        nodes: nodes.unwrap_or((scale / 100).max(1)).max(1),
        namespaces: namespaces.unwrap_or((scale / 20).max(2)).max(2),
        events,
        concurrency,
        probe_timeout: Duration::from_millis(probe_ms),
        seed,
        agent_args,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !palisade_kubetest::e2e_prerequisites() {
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return Err(Error::other("installing signal handlers"));
        };
        // On a signal the bench future is dropped: the cluster's owners clean up on drop.
        tokio::select! {
            r = run(&args) => r.map(|()| true),
            _ = tokio::signal::ctrl_c() => Ok(false),
            _ = term.recv() => Ok(false),
            _ = hup.recv() => Ok(false),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(10));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("agent_bench: interrupted; cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("agent_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Progress on stderr, with the time since the start.
fn progress(started: Instant, what: impl std::fmt::Display) {
    eprintln!("[{:>7.1} s] {what}", started.elapsed().as_secs_f64());
}

fn key(namespace: &str, name: &str) -> Key {
    Key::new(namespace, name)
}

/// `/proc/loadavg`'s first three fields: how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

async fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let load_at_start = load_average();
    // Built (or found up to date) before anything is timed.
    let binary = palisade_kubetest::palisade_binary()?;
    progress(started, format!("palisade binary: {}", binary.display()));

    let generated = Generated::new(args)?;
    progress(
        started,
        format!(
            "generated {} namespaces, {} pods ({} on node-0), {} policies; API objects convert back to the same model",
            generated.namespaces.len(),
            generated.pods.len(),
            generated.local_pods,
            generated.policies.len()
        ),
    );

    let server = key(BENCH_NS, "server");
    let client = key(BENCH_NS, "client");
    let spec = LabClusterSpec {
        lab: LabSpec {
            nodes: 1,
            pods: vec![
                LabPod::new(server.clone())
                    .on_node(0)
                    .with_ports([(LABEL_PORT, Protocol::Tcp), (POLICY_PORT, Protocol::Tcp)]),
                LabPod::new(client.clone()).on_node(0),
            ],
            families: Families::V4_ONLY,
        },
        namespaces: vec![(BENCH_NS.into(), labels(&[("team", "bench")]))],
        ..Default::default()
    };
    let mut c = LabCluster::start(spec).await?;
    progress(
        started,
        format!(
            "control plane on {}, lab {}",
            c.cp.api_addr(),
            c.lab.prefix()
        ),
    );
    let tcp = |p: u16| PodPort::new(Some(&format!("tcp-{p}")), p, Protocol::Tcp);
    c.run_lab_pod(
        &server,
        labels(&[("app", "server")]),
        vec![tcp(LABEL_PORT), tcp(POLICY_PORT)],
    )
    .await?;
    c.run_lab_pod(&client, labels(&[("role", "client")]), Vec::new())
        .await?;
    for doc in [
        bench_policy(
            "deny-server",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}),
        ),
        bench_policy(
            "allow-granted",
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {GRANT.0: GRANT.1}}}],
                    "ports": [{"protocol": "TCP", "port": LABEL_PORT}],
                }],
            }),
        ),
    ] {
        c.admin.apply_policy(&doc).await?;
    }

    // ---- 1. the cluster through the API ----
    let created = generated
        .create(&c.admin, &c.client, args.concurrency, started)
        .await?;
    progress(
        started,
        format!(
            "created {} objects in {:.1} s ({:.0} writes/s, {} in flight)",
            created.objects,
            created.elapsed.as_secs_f64(),
            created.writes as f64 / created.elapsed.as_secs_f64(),
            args.concurrency
        ),
    );

    // ---- 2. the agent's initial sync ----
    let mut agent_spec = c.agent_spec(0)?;
    agent_spec
        .extra_args
        .extend(args.agent_args.iter().cloned());
    c.agents.push(Agent::spawn(agent_spec)?);
    let ready = c.agents[0].wait_ready(READY_TIMEOUT).await?;
    let first_sync = FirstSync::from_log(&c.agents[0].log());
    let pid = c.agents[0]
        .pid()
        .ok_or_else(|| Error::other("agent has no pid"))?;
    let memory_synced = Memory::of(pid)?;
    let gauges = Gauges::read(&c.agents[0])?;
    progress(
        started,
        format!(
            "agent ready {:.2} s after its start; {memory_synced}; {gauges}",
            ready.as_secs_f64(),
        ),
    );

    let server_ip = c
        .lab
        .pod_ip(&server, IpFamily::V4)
        .ok_or_else(|| Error::other("server has no IPv4 address"))?;
    let client_netns = c
        .lab
        .pod_netns(&client)
        .ok_or_else(|| Error::other("client has no netns"))?
        .to_string();
    for port in [LABEL_PORT, POLICY_PORT] {
        expect_denied(&c, &client, server_ip, port).await?;
    }

    // ---- 3. events ----
    let pods: Api<ApiPod> = Api::namespaced(c.client.clone(), BENCH_NS);
    let policies: Api<ApiPolicy> = Api::namespaced(c.client.clone(), BENCH_NS);
    let flipper = Flipper {
        netns: client_netns,
        probe_timeout: args.probe_timeout,
        watched: watch_bench_namespace(c.client.clone()).await?,
    };

    let mut label_events = Vec::new();
    for i in 0..args.events {
        let to = SocketAddr::new(server_ip, LABEL_PORT);
        let grant = json!({"metadata": {"labels": {GRANT.0: GRANT.1}}});
        let revoke = json!({"metadata": {"labels": {GRANT.0: null}}});
        let pods_w = pods.clone();
        let m = measure(&c.agents[0], &flipper, to, async move {
            pods_w
                .patch("client", &PatchParams::default(), &Patch::Merge(&grant))
                .await
                .ctx("labelling bench/client")
                .map(drop)
        })
        .await
        .map_err(|e| with_log(&c, format!("label event {i}"), e))?;
        label_events.push(m);
        let before = Snapshot::read(&c.agents[0])?;
        pods.patch("client", &PatchParams::default(), &Patch::Merge(&revoke))
            .await
            .ctx("unlabelling bench/client")?;
        wait_applied(&c.agents[0], before.events + 1.0).await?;
        expect_denied(&c, &client, server_ip, LABEL_PORT).await?;
        if (i + 1).is_multiple_of(25) {
            progress(started, format!("label events: {}", i + 1));
        }
    }

    let mut policy_events = Vec::new();
    for i in 0..args.events {
        let to = SocketAddr::new(server_ip, POLICY_PORT);
        let name = format!("allow-client-{i}");
        let doc = bench_policy(
            &name,
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": POLICY_PORT}],
                }],
            }),
        );
        let policy: ApiPolicy = serde_json::from_value(doc).map_err(Error::other)?;
        let policies_w = policies.clone();
        let m = measure(&c.agents[0], &flipper, to, async move {
            policies_w
                .create(&PostParams::default(), &policy)
                .await
                .ctx("creating a bench policy")
                .map(drop)
        })
        .await
        .map_err(|e| with_log(&c, format!("policy event {i}"), e))?;
        policy_events.push(m);
        let before = Snapshot::read(&c.agents[0])?;
        policies
            .delete(&name, &DeleteParams::default())
            .await
            .ctx(format!("deleting bench/{name}"))?;
        wait_applied(&c.agents[0], before.events + 1.0).await?;
        expect_denied(&c, &client, server_ip, POLICY_PORT).await?;
        if (i + 1).is_multiple_of(25) {
            progress(started, format!("policy events: {}", i + 1));
        }
    }
    let memory_after = Memory::of(pid)?;
    let load_after_events = load_average();
    progress(started, format!("after the events: {memory_after}"));

    // ---- report ----
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "\n## agent_bench --scale {} --nodes {} --namespaces {} --events {} (seed {})\n",
            args.scale, args.nodes, args.namespaces, args.events, args.seed
        ),
    );
    line(
        &mut out,
        format!(
            "cluster: {} namespaces, {} pods, {} policies (+ bench: 1 namespace, 2 pods, 2 policies); {} virtual nodes, {} generated pods on the agent's node (+ the 2 lab pods)",
            generated.namespaces.len(),
            generated.pods.len(),
            generated.policies.len(),
            args.nodes,
            generated.local_pods
        ),
    );
    line(
        &mut out,
        format!(
            "created {} objects ({} writes) in {:.1} s, {} in flight",
            created.objects,
            created.writes,
            created.elapsed.as_secs_f64(),
            args.concurrency
        ),
    );
    line(
        &mut out,
        format!(
            "initial sync: process start -> /readyz 200 in {:.2} s; {first_sync}",
            ready.as_secs_f64()
        ),
    );
    line(&mut out, format!("ruleset after sync: {gauges}"));
    line(&mut out, format!("memory after sync: {memory_synced}"));
    line(&mut out, format!("memory after the events: {memory_after}"));
    line(
        &mut out,
        format!(
            "load average (1, 5, 15 min): {load_at_start} at the start, {load_after_events} after the events"
        ),
    );
    line(&mut out, String::new());
    line(
        &mut out,
        "| event | figure | p50 | p90 | p99 | max | mean |".into(),
    );
    line(&mut out, "|---|---|---|---|---|---|---|".into());
    for (name, events) in [
        ("pod label (peer)", &label_events),
        ("policy create", &policy_events),
    ] {
        let figures: [(&str, Figure); 5] = [
            ("API write -> first packet through (end to end)", |m| {
                m.end_to_end
            }),
            ("API write call alone", |m| m.write),
            ("agent: watch arrival -> applied (histogram)", |m| {
                m.agent_event
            }),
            ("agent: compile + nft apply (sync histogram)", |m| {
                m.agent_sync
            }),
            (
                "API write -> event at a second watcher (API server, watch delivery)",
                |m| m.delivered,
            ),
        ];
        for (figure, get) in figures {
            let values: Vec<Duration> = events.iter().map(get).collect();
            let s = Stats::of(&values);
            line(
                &mut out,
                format!(
                    "| {name} | {figure} | {} | {} | {} | {} | {} |",
                    ms(s.p50),
                    ms(s.p90),
                    ms(s.p99),
                    ms(s.max),
                    ms(s.mean)
                ),
            );
        }
        let attempts: usize = events.iter().map(|m| m.attempts).sum();
        let multi: usize = events.iter().filter(|m| m.agent_events != 1).count();
        line(
            &mut out,
            format!(
                "| {name} | connect attempts per event (mean) | {:.1} | | | | |",
                attempts as f64 / events.len().max(1) as f64
            ),
        );
        if multi > 0 {
            line(
                &mut out,
                format!(
                    "| {name} | events whose window held other events (agent figure is their mean) | {multi} | | | | |"
                ),
            );
        }
    }
    let missed: usize = label_events
        .iter()
        .chain(&policy_events)
        .map(|m| m.retries)
        .sum();
    line(
        &mut out,
        format!("\nflips that needed a second try (missed within {FLIP_DEADLINE:?}): {missed}"),
    );
    println!("{out}");
    progress(started, "done; cleaning up");
    Ok(())
}

fn with_log(c: &LabCluster, what: String, e: Error) -> Error {
    Error::other(format!("{what}: {e}\n{}", c.agent_logs(20)))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn bench_policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": BENCH_NS},
        "spec": spec,
    })
}

// ---------------------------------------------------------------------------------------
// The generated cluster as API objects.

/// A pod to create, and the status kubelet then writes.
#[derive(Debug, Clone)]
struct PodWrite {
    pod: ApiPod,
    status: Value,
}

#[derive(Debug)]
struct Generated {
    namespaces: Vec<Namespace>,
    pods: Vec<PodWrite>,
    policies: Vec<ApiPolicy>,
    local_pods: usize,
}

#[derive(Debug)]
struct Created {
    objects: usize,
    writes: usize,
    elapsed: Duration,
}

impl Generated {
    fn new(args: &Args) -> Result<Generated> {
        let params = GenParams {
            namespaces: args.namespaces,
            pods: args.scale,
            policies: args.scale,
            nodes: args.nodes,
            ..GenParams::default()
        };
        let mut out = Generated {
            namespaces: Vec::new(),
            pods: Vec::new(),
            policies: Vec::new(),
            local_pods: 0,
        };
        for object in generate_cluster(args.seed, params) {
            match object {
                Object::Namespace(n) => out.namespaces.push(n),
                Object::Pod(p) => {
                    let write = pod_write(&p)?;
                    let mut full = serde_json::to_value(&write.pod).map_err(Error::other)?;
                    full["status"] = write.status.clone();
                    let back: ApiPod = serde_json::from_value(full).map_err(Error::other)?;
                    check_same(
                        &Object::Pod(p.clone()),
                        palisade_model::convert::pod(&back).map(Object::Pod),
                    )?;
                    if p.node.as_deref() == Some("node-0") {
                        out.local_pods += 1;
                    }
                    out.pods.push(write);
                }
                Object::NetworkPolicy(p) => {
                    let api: ApiPolicy =
                        serde_json::from_value(policy_json(&p)).map_err(Error::other)?;
                    check_same(
                        &Object::NetworkPolicy(p.clone()),
                        palisade_model::convert::network_policy(&api).map(Object::NetworkPolicy),
                    )?;
                    out.policies.push(api);
                }
            }
        }
        Ok(out)
    }

    /// Namespaces first, then pods and policies interleaved, `concurrency` writes in flight.
    async fn create(
        &self,
        admin: &Admin,
        client: &Client,
        concurrency: usize,
        started: Instant,
    ) -> Result<Created> {
        let t0 = Instant::now();
        futures::stream::iter(self.namespaces.iter().map(Ok))
            .try_for_each_concurrent(concurrency, |n| async move {
                let mut labels = n.labels.clone();
                labels.remove(palisade_kubetest::kubelet::NAMESPACE_NAME_LABEL);
                admin.ensure_namespace(&n.name, &labels).await
            })
            .await?;
        enum Write<'a> {
            Pod(&'a PodWrite),
            Policy(&'a ApiPolicy),
        }
        let mut writes = Vec::with_capacity(self.pods.len() + self.policies.len());
        let (mut pods, mut policies) = (self.pods.iter(), self.policies.iter());
        loop {
            let (p, q) = (pods.next(), policies.next());
            if p.is_none() && q.is_none() {
                break;
            }
            writes.extend(p.map(Write::Pod));
            writes.extend(q.map(Write::Policy));
        }
        let done = Arc::new(AtomicUsize::new(0));
        let total = writes.len();
        futures::stream::iter(writes.into_iter().map(Ok))
            .map_ok(|w| {
                let done = done.clone();
                let client = client.clone();
                async move {
                    match w {
                        Write::Pod(p) => create_pod(&client, p).await?,
                        Write::Policy(p) => create_policy(&client, p).await?,
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(2000) || n == total {
                        progress(started, format!("created {n}/{total} pods and policies"));
                    }
                    Ok::<(), Error>(())
                }
            })
            .try_buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(Created {
            objects: self.namespaces.len() + total,
            writes: self.namespaces.len() + 2 * self.pods.len() + self.policies.len(),
            elapsed: t0.elapsed(),
        })
    }
}

fn check_same(
    original: &Object,
    back: std::result::Result<Object, palisade_model::error::InvalidObject>,
) -> Result<()> {
    match back {
        Ok(b) if &b == original => Ok(()),
        Ok(b) => Err(Error::other(format!(
            "API form of a generated object converts back differently:\n{original:?}\n{b:?}"
        ))),
        Err(e) => Err(Error::other(format!(
            "API form of a generated object is invalid: {e}\n{original:?}"
        ))),
    }
}

/// A write error worth retrying (the API server or etcd busy, a connection reset).
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs `write` up to 5 times while it fails transiently; `409 AlreadyExists` on a retry
/// means the earlier attempt went through.
async fn with_retry<F, Fut, T>(what: &str, mut write: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kube::Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        match write().await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt > 0 => return Ok(()),
            Err(e) if attempt < 4 && transient(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
            Err(e) => return Err(e).ctx(what),
        }
    }
}

async fn create_pod(client: &Client, p: &PodWrite) -> Result<()> {
    let namespace = p.pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = p.pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<ApiPod> = Api::namespaced(client.clone(), namespace);
    let (post, patch) = (PostParams::default(), PatchParams::default());
    with_retry(&format!("creating pod {namespace}/{name}"), || {
        api.create(&post, &p.pod)
    })
    .await?;
    let status = Patch::Merge(json!({"status": p.status}));
    with_retry(&format!("status of pod {namespace}/{name}"), || {
        api.patch_status(name, &patch, &status)
    })
    .await
}

async fn create_policy(client: &Client, p: &ApiPolicy) -> Result<()> {
    let namespace = p.metadata.namespace.as_deref().unwrap_or_default();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let api: Api<ApiPolicy> = Api::namespaced(client.clone(), namespace);
    let post = PostParams::default();
    with_retry(
        &format!("creating NetworkPolicy {namespace}/{name}"),
        || api.create(&post, p),
    )
    .await
}

fn phase_str(phase: PodPhase) -> &'static str {
    match phase {
        PodPhase::Pending => "Pending",
        PodPhase::Running => "Running",
        PodPhase::Succeeded => "Succeeded",
        PodPhase::Failed => "Failed",
        PodPhase::Unknown => "Unknown",
    }
}

fn pod_write(p: &Pod) -> Result<PodWrite> {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|port| {
            let mut v = json!({"containerPort": port.port, "protocol": port.protocol.as_str()});
            if let Some(name) = &port.name {
                v["name"] = json!(name);
            }
            v
        })
        .collect();
    let mut spec = json!({
        // Never pulled: no kubelet runs. A reserved name (.invalid) all the same.
        "containers": [{"name": "main", "image": "palisade.invalid/bench:0", "ports": ports}],
    });
    if let Some(node) = &p.node {
        spec["nodeName"] = json!(node);
    }
    if p.host_network {
        spec["hostNetwork"] = json!(true);
    }
    let pod: ApiPod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": p.key.name, "namespace": p.key.namespace, "labels": p.labels},
        "spec": spec,
    }))
    .map_err(Error::other)?;
    let mut status = json!({"phase": phase_str(p.phase)});
    if let Some(first) = p.ips.first() {
        status["podIP"] = json!(first.to_string());
        status["podIPs"] = p
            .ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
    }
    Ok(PodWrite { pod, status })
}

fn selector_json(s: &LabelSelector) -> Value {
    let mut v = Map::new();
    if !s.match_labels.is_empty() {
        v.insert("matchLabels".into(), json!(s.match_labels));
    }
    if !s.match_expressions.is_empty() {
        let exprs: Vec<Value> = s
            .match_expressions
            .iter()
            .map(|r| {
                let mut e = json!({"key": r.key, "operator": r.operator.to_string()});
                if matches!(r.operator, Operator::In | Operator::NotIn) {
                    e["values"] = json!(r.values);
                }
                e
            })
            .collect();
        v.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(v)
}

fn peer_json(p: &Peer) -> Value {
    match p {
        Peer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let mut v = Map::new();
            if let Some(s) = namespace_selector {
                v.insert("namespaceSelector".into(), selector_json(s));
            }
            if let Some(s) = pod_selector {
                v.insert("podSelector".into(), selector_json(s));
            }
            Value::Object(v)
        }
        Peer::IpBlock(b) => {
            let mut block = json!({"cidr": b.cidr.to_string()});
            if !b.except.is_empty() {
                block["except"] = b.except.iter().map(|e| json!(e.to_string())).collect();
            }
            json!({"ipBlock": block})
        }
    }
}

fn port_json(p: &PortMatch) -> Value {
    let mut v = json!({"protocol": p.protocol.as_str()});
    match &p.port {
        PortSpec::Any => {}
        PortSpec::Range { from, to } => {
            v["port"] = json!(from);
            if to > from {
                v["endPort"] = json!(to);
            }
        }
        PortSpec::Named(name) => v["port"] = json!(name),
    }
    v
}

fn rule_json(r: &Rule, peers_field: &str) -> Value {
    let mut v = Map::new();
    if !r.peers.is_empty() {
        v.insert(peers_field.into(), r.peers.iter().map(peer_json).collect());
    }
    if !r.ports.is_empty() {
        v.insert("ports".into(), r.ports.iter().map(port_json).collect());
    }
    Value::Object(v)
}

fn policy_json(p: &NetworkPolicy) -> Value {
    let mut types = Vec::new();
    if p.isolates_ingress {
        types.push("Ingress");
    }
    if p.isolates_egress {
        types.push("Egress");
    }
    let mut spec = json!({"podSelector": selector_json(&p.pod_selector), "policyTypes": types});
    if !p.ingress.is_empty() {
        spec["ingress"] = p.ingress.iter().map(|r| rule_json(r, "from")).collect();
    }
    if !p.egress.is_empty() {
        spec["egress"] = p.egress.iter().map(|r| rule_json(r, "to")).collect();
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": p.key.name, "namespace": p.key.namespace},
        "spec": spec,
    })
}

// ---------------------------------------------------------------------------------------
// Measuring.

/// The agent's counters this bench reads.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    /// `palisade_event_to_applied_seconds_count`: events applied so far.
    events: f64,
    event_sum: f64,
    sync_count: f64,
    sync_sum: f64,
}

impl Snapshot {
    fn read(agent: &Agent) -> Result<Snapshot> {
        let m = agent.metrics()?;
        let get = |name: &str| m.value(name, &[]).unwrap_or(0.0);
        Ok(Snapshot {
            events: get("palisade_event_to_applied_seconds_count"),
            event_sum: get("palisade_event_to_applied_seconds_sum"),
            sync_count: get("palisade_sync_duration_seconds_count"),
            sync_sum: get("palisade_sync_duration_seconds_sum"),
        })
    }
}

/// Polls the agent's /metrics (every 5 ms) until it applied `events` events in all.
async fn wait_applied(agent: &Agent, events: f64) -> Result<Snapshot> {
    let t0 = Instant::now();
    loop {
        let s = Snapshot::read(agent)?;
        if s.events >= events {
            return Ok(s);
        }
        if t0.elapsed() > CATCH_UP {
            return Err(Error::Timeout {
                what: format!("agent applying {events} events"),
                after: CATCH_UP,
                detail: format!("seen {}\n{}", s.events, agent.log_tail(20)),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The rules gauges of the agent.
#[derive(Debug, Clone, Copy)]
struct Gauges {
    endpoints: f64,
    rules: f64,
    sets: f64,
    elements: f64,
}

impl Gauges {
    fn read(agent: &Agent) -> Result<Gauges> {
        let m = agent.metrics()?;
        let get = |name: &str| m.value(name, &[]).unwrap_or(0.0);
        Ok(Gauges {
            endpoints: get("palisade_endpoints"),
            rules: get("palisade_ruleset_rules"),
            sets: get("palisade_ruleset_sets"),
            elements: get("palisade_ruleset_set_elements"),
        })
    }
}

impl std::fmt::Display for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} local endpoints, {} allow rules, {} sets, {} set elements",
            self.endpoints, self.rules, self.sets, self.elements
        )
    }
}

/// VmRSS and VmHWM of a process.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).ctx(&path)?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| Error::other(format!("{path}: no {name}")))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0
        )
    }
}

/// What the agent's log says about its first sync.
#[derive(Debug, Default)]
struct FirstSync {
    /// Seconds after the first log line at which each kind's initial list was in.
    lists: Vec<(String, f64)>,
    /// Seconds after the first log line of the first apply, and its compile + apply time.
    applied_at: Option<f64>,
    applied_ms: Option<f64>,
}

/// Seconds since midnight of a log line's RFC 3339 timestamp (`...T12:34:56.789Z`).
fn log_seconds(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.splitn(3, ':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn field_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()
}

impl FirstSync {
    fn from_log(log: &str) -> FirstSync {
        let mut out = FirstSync::default();
        let mut first = None;
        for line in log.lines() {
            let Some(t) = log_seconds(line) else { continue };
            let first = *first.get_or_insert(t);
            if line.contains("initial list received") {
                let kind = field_value(line, "kind").unwrap_or("?").to_string();
                out.lists.push((kind, t - first));
            } else if line.contains(" applied") && out.applied_at.is_none() {
                out.applied_at = Some(t - first);
                out.applied_ms = field_value(line, "elapsed_ms").and_then(|v| v.parse().ok());
                break;
            }
        }
        out
    }
}

impl std::fmt::Display for FirstSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("agent log (s after its first line): ")?;
        for (kind, t) in &self.lists {
            write!(f, "{kind} list in at {t:.2}, ")?;
        }
        match (self.applied_at, self.applied_ms) {
            (Some(t), Some(ms)) => write!(
                f,
                "first full apply done at {t:.2} (compile + nft {ms:.0} ms)"
            ),
            _ => f.write_str("no apply line found"),
        }
    }
}

/// Connects from inside the client's namespace until the flow gets through.
#[derive(Debug)]
struct Flipper {
    netns: String,
    probe_timeout: Duration,
    /// Arrival times of the watch events of the bench namespace, at the bench's own watch.
    watched: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
}

/// Watches the bench namespace's pods and policies (as the agent watches every namespace)
/// and sends the arrival time of every change: how long the API server takes to deliver a
/// write to a watcher, measured beside the agent. Returns once both watches are past their
/// initial list (a change made during it would not come as an event).
async fn watch_bench_namespace(
    client: Client,
) -> Result<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>> {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    fn forward<K>(
        api: Api<K>,
        tx: tokio::sync::mpsc::UnboundedSender<Instant>,
        listed: tokio::sync::oneshot::Sender<()>,
    ) where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
            let mut listed = Some(listed);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(Event::InitDone) => {
                        if let Some(l) = listed.take() {
                            let _ = l.send(());
                        }
                    }
                    Ok(Event::Apply(_) | Event::Delete(_)) if tx.send(Instant::now()).is_err() => {
                        return;
                    }
                    _ => {}
                }
            }
        });
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (pods_listed, pods_done) = tokio::sync::oneshot::channel();
    let (policies_listed, policies_done) = tokio::sync::oneshot::channel();
    forward::<ApiPod>(
        Api::namespaced(client.clone(), BENCH_NS),
        tx.clone(),
        pods_listed,
    );
    forward::<ApiPolicy>(Api::namespaced(client, BENCH_NS), tx, policies_listed);
    let both = async {
        let _ = pods_done.await;
        let _ = policies_done.await;
    };
    tokio::time::timeout(CATCH_UP, both)
        .await
        .map_err(|_| Error::other("the bench's own watch of its namespace did not start"))?;
    Ok(tokio::sync::Mutex::new(rx))
}

/// When a flip showed.
#[derive(Debug, Clone, Copy)]
struct Flip {
    /// The end of the first handshake that completed.
    through: Instant,
    attempts: usize,
}

impl Flipper {
    /// Starts the connect loop on its own thread; it ends at the first connection, or after
    /// [`FLIP_DEADLINE`].
    fn start(&self, to: SocketAddr) -> std::thread::JoinHandle<Result<Option<Flip>>> {
        let netns = self.netns.clone();
        let timeout = self.probe_timeout;
        std::thread::spawn(move || {
            in_netns(&netns, || {
                let t0 = Instant::now();
                let mut attempts = 0;
                while t0.elapsed() < FLIP_DEADLINE {
                    attempts += 1;
                    if TcpStream::connect_timeout(&to, timeout).is_ok() {
                        return Some(Flip {
                            through: Instant::now(),
                            attempts,
                        });
                    }
                }
                None
            })
        })
    }
}

/// One figure of a [`Measured`] event, for the report.
type Figure = fn(&Measured) -> Duration;

/// One measured event.
#[derive(Debug, Clone, Copy)]
struct Measured {
    write: Duration,
    end_to_end: Duration,
    /// When the bench's own watch (a second client, like the agent's) saw the event.
    delivered: Duration,
    agent_event: Duration,
    agent_sync: Duration,
    /// Events the agent applied in the window (1 unless something else happened).
    agent_events: u64,
    attempts: usize,
    retries: usize,
}

/// Times one write: the connect loop starts, the write is made, the loop reports the first
/// connection; then waits until the agent applied the event and reads its own figures.
async fn measure<W>(agent: &Agent, flipper: &Flipper, to: SocketAddr, write: W) -> Result<Measured>
where
    W: Future<Output = Result<()>>,
{
    let before = Snapshot::read(agent)?;
    let mut watched = flipper.watched.lock().await;
    while watched.try_recv().is_ok() {}
    let loop_thread = flipper.start(to);
    let t0 = Instant::now();
    write.await?;
    let written = t0.elapsed();
    let flip = tokio::task::spawn_blocking(move || loop_thread.join())
        .await
        .map_err(Error::other)?
        .map_err(|_| Error::other("connect loop panicked"))??;
    let after = wait_applied(agent, before.events + 1.0).await?;
    // Another loop if the first one ran out (e.g. a stall of the machine).
    let (flip, retries) = match flip {
        Some(f) => (f, 0),
        None => {
            let again = flipper.start(to);
            let f = tokio::task::spawn_blocking(move || again.join())
                .await
                .map_err(Error::other)?
                .map_err(|_| Error::other("connect loop panicked"))??;
            match f {
                Some(f) => (f, 1),
                None => {
                    return Err(Error::Timeout {
                        what: format!("a connection to {to} after the write"),
                        after: FLIP_DEADLINE * 2,
                        detail: format!("agent applied {} events", after.events - before.events),
                    });
                }
            }
        }
    };
    let delivered = loop {
        match tokio::time::timeout(CATCH_UP, watched.recv()).await {
            Ok(Some(at)) if at >= t0 => break at - t0,
            Ok(Some(_)) => continue,
            _ => return Err(Error::other("the bench's own watch saw no event")),
        }
    };
    let n = (after.events - before.events).max(1.0);
    let syncs = (after.sync_count - before.sync_count).max(1.0);
    Ok(Measured {
        write: written,
        end_to_end: flip.through.saturating_duration_since(t0),
        delivered,
        agent_event: Duration::from_secs_f64(((after.event_sum - before.event_sum) / n).max(0.0)),
        agent_sync: Duration::from_secs_f64(((after.sync_sum - before.sync_sum) / syncs).max(0.0)),
        agent_events: n as u64,
        attempts: flip.attempts,
        retries,
    })
}

/// Waits (bounded) until a connect of the flow times out (dropped: denied).
async fn expect_denied(c: &LabCluster, from: &Key, to: IpAddr, port: u16) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let outcome = c
            .lab
            .probe(from, to, port, Protocol::Tcp, Duration::from_millis(50));
        match outcome {
            ProbeOutcome::TimedOut => return Ok(()),
            ProbeOutcome::Error(e) => return Err(Error::other(format!("probe: {e}"))),
            _ => {}
        }
        if t0.elapsed() > CATCH_UP {
            return Err(Error::Timeout {
                what: format!("{from} -> {to}:{port} denied"),
                after: CATCH_UP,
                detail: format!("last: {outcome}\n{}", c.agent_logs(20)),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Default)]
struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

impl Stats {
    /// Nearest-rank percentiles.
    fn of(values: &[Duration]) -> Stats {
        if values.is_empty() {
            return Stats::default();
        }
        let mut v = values.to_vec();
        v.sort();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<Duration>() / v.len() as u32,
        }
    }
}
