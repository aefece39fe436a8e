//! `apply`, `lab conformance`, `lab down` and `demo`: the commands that touch a kernel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use palisade_conformance::CaseFile;
use palisade_engine::{ClusterState, Endpoint, Flow};
use palisade_ir::events::EventConfig;
use palisade_ir::{Dataplane, NodeRuleset};
use palisade_lab::enforce::{Enforcer, LabProber};
use palisade_lab::{Lab, LabPod, LabSpec};
use palisade_model::load::{Loaded, load_paths, load_str};
use palisade_model::{IpFamily, Key, Object, Protocol};
use palisade_nft::{NftDataplane, SystemNft};

use crate::analysis::{PortArg, render_matrix};

/// The dataplanes this binary can drive: the one place that knows every backend (`apply`,
/// `agent`, `lab conformance` and `demo` all choose through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// nftables: one `inet` table per node, applied atomically (the default).
    Nft,
    /// iptables + ipset: Palisade's own chains (`PAL-*`) in the `filter` tables and ipsets,
    /// on the iptables backend the host uses (legacy or nf_tables, detected as kube-proxy
    /// does: the one holding more rules).
    Iptables,
    /// iptables + ipset, forced onto the legacy (x_tables) backend.
    IptablesLegacy,
    /// iptables + ipset, forced onto the nf_tables backend (`iptables-nft`).
    IptablesNft,
    /// eBPF: tc programs (TCX) on the host side of each pod's interface, judged by map
    /// lookups; changes are map writes flipped in one generation write.
    Ebpf,
}

impl Backend {
    /// The iptables backend forced by this choice (`None`: detect it, or not iptables).
    fn iptables_mode(self) -> Option<palisade_iptables::IptablesMode> {
        match self {
            Backend::IptablesLegacy => Some(palisade_iptables::IptablesMode::Legacy),
            Backend::IptablesNft => Some(palisade_iptables::IptablesMode::Nft),
            Backend::Nft | Backend::Iptables | Backend::Ebpf => None,
        }
    }
}

/// Builds a backend that applies inside `netns` (None = this process's namespace).
/// `table` names the kernel objects the backend owns; `events` turns verdict events on.
pub fn make_dataplane(
    backend: Backend,
    netns: Option<&str>,
    table: &str,
    events: Option<EventConfig>,
) -> Box<dyn Dataplane> {
    match backend {
        Backend::Nft => {
            let exec = match netns {
                Some(ns) => SystemNft::in_netns(ns),
                None => SystemNft::new(),
            };
            let config = palisade_nft::Config {
                table: table.to_string(),
                events,
            };
            Box::new(NftDataplane::new(exec, config))
        }
        // The iptables backend's objects are named `PAL-*`; `table` names nft tables only.
        Backend::Iptables | Backend::IptablesLegacy | Backend::IptablesNft => Box::new(
            palisade_iptables::IptablesDataplane::new(palisade_iptables::SystemIptables::new(
                netns,
                backend.iptables_mode(),
            ))
            .with_events(events),
        ),
        // The eBPF backend owns its pins (one scope per netns), not a named table.
        Backend::Ebpf => {
            let exec = match netns {
                Some(ns) => palisade_ebpf::SystemBpf::in_netns(ns),
                None => palisade_ebpf::SystemBpf::new(),
            };
            Box::new(palisade_ebpf::EbpfDataplane::new(exec).with_events(events))
        }
    }
}

/// Probes `flow` once more and returns its verdict event as `palisade events` prints it
/// (reports of the matrix probes before it are discarded).
fn denied_flow_event(
    lab: &Lab,
    enforcer: &Enforcer<'_>,
    sources: &mut [Box<dyn palisade_ir::events::EventSource>],
    flow: &Flow,
    args: &DemoArgs,
) -> anyhow::Result<Option<String>> {
    for s in sources.iter_mut() {
        s.recv(Duration::from_millis(50))?;
    }
    let (Endpoint::Pod(src), Endpoint::Pod(dst)) = (&flow.src, &flow.dst) else {
        return Ok(None);
    };
    let (Some(from), Some(to)) = (lab.pod_ip(src, args.family), lab.pod_ip(dst, args.family))
    else {
        return Ok(None);
    };
    let request = palisade_lab::ProbeRequest::new(src.clone(), to, flow.port, flow.protocol)
        .with_timeout(Duration::from_millis(800));
    lab.probe_many_traced(std::slice::from_ref(&request));
    for (i, s) in sources.iter_mut().enumerate() {
        let Some(report) = s.recv(Duration::from_millis(300))?.into_iter().find(|e| {
            (e.packet.src, e.packet.dst, e.packet.dst_port) == (from, to, Some(flow.port))
        }) else {
            continue;
        };
        let hub = palisade_agent::events::EventHub::new(lab.node_names()[i].clone());
        if let Some(rs) = enforcer.applied(i) {
            hub.applied(rs);
        }
        return Ok(Some(crate::live::event_line(&hub.resolve(&report, 1))));
    }
    Ok(None)
}

/// What `apply --dry-run` prints: the backend's full transaction for `ruleset`, with the
/// counters in it (one per policy rule, one per endpoint's default deny).
pub fn render_dry_run(
    backend: Backend,
    ruleset: &NodeRuleset,
    table: &str,
) -> anyhow::Result<String> {
    ruleset.validate()?;
    match backend {
        Backend::Nft => Ok(palisade_nft::render_full(
            ruleset,
            &palisade_nft::Config {
                table: table.to_string(),
                events: None,
            },
        )),
        Backend::Iptables | Backend::IptablesLegacy | Backend::IptablesNft => {
            Ok(palisade_iptables::render_full(ruleset).text())
        }
        Backend::Ebpf => Ok(palisade_ebpf::render_full(ruleset)),
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file or folder; `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Backend::Nft)]
    pub backend: Backend,
    /// The node whose pods (spec.nodeName) are enforced.
    #[arg(long)]
    pub node: String,
    /// Print the ruleset instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply inside this network namespace (`ip netns` name) instead of the current one.
    #[arg(long)]
    pub netns: Option<String>,
    /// Name of the nft table Palisade owns.
    #[arg(long, default_value = "palisade")]
    pub table: String,
}

fn summary(rs: &NodeRuleset) -> String {
    let s = rs.stats();
    format!(
        "{}: {} endpoints, {} rules, {} peer sets, {} port sets, {} set elements",
        rs.node, s.endpoints, s.rules, s.peer_sets, s.port_sets, s.set_elements
    )
}

pub fn apply(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let loaded = load_paths(&args.paths);
    let state = checked_state(&loaded)?;
    let ruleset = state.compile_node(&args.node);
    if ruleset.endpoints.is_empty() {
        eprintln!(
            "note: no pod with spec.nodeName {:?}, an address and no hostNetwork; the table will hold no endpoint",
            args.node
        );
    }
    match args.backend {
        backend if args.dry_run => {
            print!("{}", render_dry_run(backend, &ruleset, &args.table)?);
        }
        backend => {
            let mut dp = make_dataplane(backend, args.netns.as_deref(), &args.table, None);
            let report = dp.apply_full(&ruleset)?;
            println!(
                "applied ({} operations) {}",
                report.operations,
                summary(&ruleset)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn checked_state(loaded: &Loaded) -> anyhow::Result<ClusterState> {
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    if !loaded.is_ok() {
        for e in &loaded.errors {
            eprintln!("error: {e}");
        }
        bail!("{} invalid input(s); nothing applied", loaded.errors.len());
    }
    Ok(ClusterState::from_objects(
        loaded.objects.iter().map(|(_, o)| o),
    ))
}

#[derive(Debug, Args)]
pub struct LabConformanceArgs {
    #[arg(long, value_enum, default_value_t = Backend::Nft)]
    pub backend: Backend,
    /// A case file in the format of testdata/conformance/README.md.
    #[arg(long)]
    pub cases: PathBuf,
    /// Run with IPv4 or IPv6 pod addresses (default: both, one after the other).
    #[arg(long, value_parser = |s: &str| s.parse::<IpFamily>())]
    pub family: Option<IpFamily>,
    /// Only these case ids (repeatable).
    #[arg(long = "case")]
    pub only: Vec<String>,
    /// Probe timeout in milliseconds (a dropped connection takes this long to fail).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Lab nodes to spread the pods over.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
}

pub fn lab_conformance(args: &LabConformanceArgs) -> anyhow::Result<ExitCode> {
    palisade_lab::check_prerequisites()?;
    palisade_lab::install_signal_cleanup()?;
    let text = std::fs::read_to_string(&args.cases)
        .with_context(|| format!("reading {}", args.cases.display()))?;
    let file = CaseFile::parse(&text, &args.cases.display().to_string())?;
    let spec = LabSpec {
        nodes: args.nodes,
        pods: file.pods.iter().map(|k| LabPod::new(k.clone())).collect(),
        ..LabSpec::default()
    };
    let lab = Lab::create(spec)?;
    let families = args
        .family
        .map_or(vec![IpFamily::V4, IpFamily::V6], |f| vec![f]);
    let mut total = palisade_conformance::Report::default();
    // Progress on stderr: a bar on a terminal, else one line per case (logs, CI).
    let cases_total = palisade_conformance::selected_cases(&file, &args.only) * families.len();
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(cases_total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} cases, {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(500));
        bar
    });
    let started = std::time::Instant::now();
    let mut cases_done = 0;
    for family in &families {
        let enforcer = Enforcer::new(&lab, |i| {
            make_dataplane(args.backend, Some(lab.node_netns(i)), "palisade", None)
        });
        let nodes = enforcer.node_of_pods(&file.pods);
        let addresses = enforcer.addresses(&file.pods, *family);
        let mut prober = LabProber::new(enforcer, Duration::from_millis(args.timeout_ms));
        let failed_before = total.failed;
        let report = palisade_conformance::run_with_progress(
            &file,
            *family,
            &addresses,
            &nodes,
            &args.only,
            &mut prober,
            &mut |p| {
                cases_done += 1;
                let failed = failed_before + p.report.failed;
                match &bar {
                    Some(bar) => {
                        bar.set_position(cases_done as u64);
                        bar.set_message(format!("{family}, {failed} failed cells"));
                    }
                    None => eprintln!(
                        "case {cases_done}/{cases_total} {family} {}: {:.1}s elapsed, {failed} failed cells so far",
                        p.case,
                        started.elapsed().as_secs_f64()
                    ),
                }
            },
        );
        prober.enforcer.remove()?;
        for f in &report.failures {
            println!("FAIL {family}: {f}");
            if let Some(detail) = &f.detail {
                for line in detail.lines() {
                    println!("    {line}");
                }
            }
        }
        let unexplained = report
            .failures
            .iter()
            .filter(|f| f.detail.is_none())
            .count();
        if unexplained > 0 {
            println!(
                "({unexplained} failed cells without details: only the first {} of a run are explained)",
                palisade_conformance::MAX_EXPLAINED
            );
        }
        for e in &report.errors {
            println!("ERROR {family}: {e}");
        }
        for (reason, n) in &report.skip_reasons {
            println!("skipped {n} cells ({family}): {reason}");
        }
        if families.len() > 1 {
            println!("{family}: {}", report.summary(true));
        }
        total.passed += report.passed;
        total.failed += report.failed;
        total.skipped += report.skipped;
        total.errors.extend(report.errors);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    lab.destroy()?;
    println!("{}", total.summary(true));
    Ok(if total.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn lab_down() -> anyhow::Result<ExitCode> {
    let n = palisade_lab::down_all()?;
    println!("removed {n} lab network namespace(s)");
    Ok(ExitCode::SUCCESS)
}

/// The demo's bundled story, embedded so the demo runs from anywhere.
const DEMO_FILES: [(&str, &str); 3] = [
    (
        "examples/demo/00-cluster.yaml",
        include_str!("../../../examples/demo/00-cluster.yaml"),
    ),
    (
        "examples/demo/01-allow-nginx.yaml",
        include_str!("../../../examples/demo/01-allow-nginx.yaml"),
    ),
    (
        "examples/demo/02-allow-frontend-to-backend.yaml",
        include_str!("../../../examples/demo/02-allow-frontend-to-backend.yaml"),
    ),
];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A folder telling another story: every file with NetworkPolicies is one step (in
    /// file-name order); the other objects form the cluster. Default: the bundled story.
    #[arg(short = 'f', long = "filename", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Backend::Nft)]
    pub backend: Backend,
    /// The port probed in the matrices.
    #[arg(long, default_value = "80/TCP")]
    pub port: PortArg,
    #[arg(long, value_parser = |s: &str| s.parse::<IpFamily>(), default_value = "ipv4")]
    pub family: IpFamily,
}

/// (file, objects) in file order.
fn demo_files(args: &DemoArgs) -> anyhow::Result<Vec<(String, Vec<Object>)>> {
    let mut texts: Vec<(String, String)> = Vec::new();
    match &args.dir {
        None => texts.extend(
            DEMO_FILES
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string())),
        ),
        Some(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            files.retain(|f| {
                f.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            });
            files.sort();
            for f in files {
                texts.push((f.display().to_string(), std::fs::read_to_string(&f)?));
            }
        }
    }
    let mut out = Vec::new();
    for (name, text) in texts {
        let mut loaded = Loaded::default();
        load_str(&text, &name, &mut loaded);
        for note in &loaded.notes {
            eprintln!("note: {note}");
        }
        if let Some(e) = loaded.errors.first() {
            bail!("{e}");
        }
        out.push((name, loaded.into_objects()));
    }
    Ok(out)
}

fn predicted(
    state: &ClusterState,
    pods: &[Key],
    port: PortArg,
    family: IpFamily,
) -> anyhow::Result<Vec<Vec<bool>>> {
    let mut rows = Vec::new();
    for src in pods {
        let mut row = Vec::new();
        for dst in pods {
            // A pod's traffic to itself never leaves its namespace.
            let allowed = src == dst
                || state.allows(&Flow {
                    src: Endpoint::Pod(src.clone()),
                    dst: Endpoint::Pod(dst.clone()),
                    protocol: port.protocol,
                    port: port.port,
                    family: Some(family),
                })?;
            row.push(allowed);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Two matrices side by side: what the packets did, what the engine predicted.
fn side_by_side(
    title: &str,
    pods: &[Key],
    measured: &[Vec<bool>],
    predicted: &[Vec<bool>],
) -> String {
    let names: Vec<String> = pods.iter().map(ToString::to_string).collect();
    let left = render_matrix(&format!("measured {title}"), &names, measured);
    let right = render_matrix(&format!("predicted {title}"), &names, predicted);
    let width = left.lines().map(str::len).max().unwrap_or(0);
    left.lines()
        .zip(right.lines())
        .map(|(l, r)| format!("{l:<width$}   |   {r}\n"))
        .collect()
}

pub fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = palisade_lab::check_prerequisites() {
        bail!(
            "{e}\nThe demo builds a small cluster of network namespaces and enforces with nftables: run it as root on Linux with iproute2 and nftables installed (scripts/demo.sh installs them)."
        );
    }
    palisade_lab::install_signal_cleanup()?;
    let files = demo_files(args)?;
    let mut state = ClusterState::new();
    let mut steps: Vec<(String, Vec<Object>)> = Vec::new();
    for (name, objects) in files {
        let (policies, rest): (Vec<Object>, Vec<Object>) = objects
            .into_iter()
            .partition(|o| matches!(o, Object::NetworkPolicy(_)));
        for o in rest {
            state.apply(o);
        }
        if !policies.is_empty() {
            steps.push((name, policies));
        }
    }
    let pods: Vec<Key> = state
        .pods()
        .iter()
        .filter(|p| !p.host_network)
        .map(|p| p.key.clone())
        .collect();
    if pods.is_empty() {
        bail!("the demo input declares no pods");
    }
    let ports: BTreeMap<Key, Vec<(u16, Protocol)>> = state
        .pods()
        .iter()
        .map(|p| {
            (
                p.key.clone(),
                p.ports.iter().map(|c| (c.port, c.protocol)).collect(),
            )
        })
        .collect();
    let spec = LabSpec {
        pods: pods
            .iter()
            .map(|k| LabPod::new(k.clone()).with_ports(ports[k].clone()))
            .collect(),
        ..LabSpec::default()
    };
    println!(
        "Building the lab: {} pods on 2 nodes (network namespaces, routed like a real node)...",
        pods.len()
    );
    let lab = Lab::create(spec)?;
    for k in &pods {
        lab.serve(k, &ports[k])?;
        let node = lab
            .pod_node(k)
            .map(|n| lab.node_names()[n].clone())
            .unwrap_or_default();
        let ips: Vec<String> = lab.pod_ips(k).iter().map(ToString::to_string).collect();
        println!("  {:<24} {node:<8} {}", k.to_string(), ips.join(", "));
    }
    // The engine sees the pods where the lab put them.
    for k in &pods {
        let mut pod = state.pod(k).expect("pod").clone();
        pod.ips = lab.pod_ips(k).to_vec();
        pod.node = lab.pod_node(k).map(|n| lab.node_names()[n].clone());
        state.upsert_pod(pod);
    }
    let mut enforcer = Enforcer::new(&lab, |i| {
        make_dataplane(
            args.backend,
            Some(lab.node_netns(i)),
            "palisade",
            Some(EventConfig::default()),
        )
    });
    // Where the kernel cannot give verdict events (no NFLOG, no BPF ring buffer), the demo
    // runs without them and says so.
    let mut event_sources = match (0..lab.node_count())
        .map(|i| enforcer.events(i))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(sources) => Some(sources),
        Err(e) => {
            println!("(no verdict events: {e})");
            None
        }
    };
    let timeout = Duration::from_millis(800);
    let mut all_match = true;
    let mut show =
        |title: &str, state: &ClusterState, enforcer: &mut Enforcer<'_>| -> anyhow::Result<()> {
            let rulesets = enforcer.enforce(state)?;
            let measured: Vec<Vec<bool>> = enforcer
                .measure(
                    &pods,
                    args.family,
                    args.port.port,
                    args.port.protocol,
                    timeout,
                )
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|o| o == palisade_conformance::Observed::Allowed)
                        .collect()
                })
                .collect();
            let predicted = predicted(state, &pods, args.port, args.family)?;
            println!("\n== {title} ==");
            print!(
                "{}",
                side_by_side(
                    &format!("{} {}", args.port, args.family),
                    &pods,
                    &measured,
                    &predicted
                )
            );
            let verdict = if measured == predicted {
                "measured == predicted"
            } else {
                "MISMATCH between packets and engine"
            };
            all_match &= measured == predicted;
            println!("{verdict}");
            for (rs, report) in &rulesets {
                println!(
                    "  ruleset {} ({} operations{})",
                    summary(rs),
                    report.operations,
                    if report.full {
                        ", full"
                    } else {
                        ", incremental"
                    }
                );
            }
            Ok(())
        };
    show(
        "no policy: every pod reaches every pod",
        &state,
        &mut enforcer,
    )?;
    for (name, policies) in steps {
        let names: Vec<String> = policies
            .iter()
            .filter_map(|o| match o {
                Object::NetworkPolicy(p) => Some(p.key.to_string()),
                _ => None,
            })
            .collect();
        for p in policies {
            state.apply(p);
        }
        show(
            &format!("after {name}: {}", names.join(", ")),
            &state,
            &mut enforcer,
        )?;
    }
    // Tell the story behind one denied cell, if any.
    if let Some((src, dst)) = pods
        .iter()
        .flat_map(|s| pods.iter().map(move |d| (s, d)))
        .find(|(s, d)| {
            s != d
                && !state
                    .allows(&Flow {
                        src: Endpoint::Pod((*s).clone()),
                        dst: Endpoint::Pod((*d).clone()),
                        protocol: args.port.protocol,
                        port: args.port.port,
                        family: Some(args.family),
                    })
                    .unwrap_or(true)
        })
    {
        let flow = Flow {
            src: Endpoint::Pod(src.clone()),
            dst: Endpoint::Pod(dst.clone()),
            protocol: args.port.protocol,
            port: args.port.port,
            family: Some(args.family),
        };
        println!("\nWhy is {src} -> {dst} denied?\n{}", state.explain(&flow)?);
        if let Some(sources) = &mut event_sources
            && let Some(line) = denied_flow_event(&lab, &enforcer, sources, &flow, args)?
        {
            println!(
                "What the dataplane reported when it dropped it (as `palisade events` shows it):\n  {line}"
            );
        }
    }
    enforcer.remove()?;
    lab.destroy()?;
    println!("\nLab removed.");
    Ok(if all_match {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
