//! # palisade-conformance
//!
//! Reads conformance case files (format: `testdata/conformance/README.md`: a model of
//! namespaces and pods, then cases of steps that relabel, delete and apply policies and
//! probe full reachability matrices) and runs them against a [`Prober`]: the engine's
//! verdicts ([`EngineProber`]) or, in the lab, real packets through a dataplane.
//!
//! Owns the case format, the evolving cluster state of a run, placeholder substitution and
//! the pass/fail bookkeeping. Must not: decide semantics (the engine does) or touch the
//! network (probers do).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_engine::{ClusterState, Endpoint, Flow};
use palisade_model::load::{Origin, load_document};
use palisade_model::{ContainerPort, IpFamily, Key, Labels, Namespace, Object, Pod, Protocol};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("{file}: {message}")]
    Format { file: String, message: String },
    #[error("{file}: case {case}: {message}")]
    Case {
        file: String,
        case: String,
        message: String,
    },
    #[error("prober: {0}")]
    Prober(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFile {
    matrix_pod_order: Vec<String>,
    #[serde(default)]
    diagonal_asserted: bool,
    initial_state: RawInitialState,
    cases: Vec<RawCase>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawInitialState {
    #[serde(default)]
    namespaces: BTreeMap<String, RawLabelled>,
    #[serde(default)]
    pods: BTreeMap<String, RawLabelled>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawLabelled {
    #[serde(default)]
    labels: Labels,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCase {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    served_ports: Vec<ServedPort>,
    steps: Vec<RawStep>,
}

/// A port every model pod serves in a case, and declares as a container port.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ServedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStep {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    pod_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    apply: Vec<Value>,
    #[serde(default)]
    probe: Vec<RawProbe>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawProbe {
    port: u16,
    protocol: Protocol,
    expect: Vec<String>,
}

/// A parsed case file.
#[derive(Debug, Clone)]
pub struct CaseFile {
    pub file: String,
    pub pods: Vec<Key>,
    pub diagonal_asserted: bool,
    pub namespaces: BTreeMap<String, Labels>,
    pub pod_labels: BTreeMap<Key, Labels>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub name: String,
    pub served_ports: Vec<ServedPort>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub description: Option<String>,
    pub namespace_labels: BTreeMap<String, Labels>,
    pub pod_labels: BTreeMap<Key, Labels>,
    pub delete: Vec<Key>,
    /// Policy documents, placeholders not yet substituted (they depend on the pod IPs).
    pub apply: Vec<Value>,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
    /// `expect[src][dst]`: true = the connection must succeed.
    pub expect: Vec<Vec<bool>>,
}

fn parse_key(file: &str, what: &str, s: &str) -> Result<Key, ConformanceError> {
    s.parse::<Key>().map_err(|e| ConformanceError::Format {
        file: file.into(),
        message: format!("{what}: {e}"),
    })
}

impl CaseFile {
    pub fn parse(text: &str, file: &str) -> Result<Self, ConformanceError> {
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| ConformanceError::Format {
            file: file.into(),
            message: e.to_string(),
        })?;
        let pods = raw
            .matrix_pod_order
            .iter()
            .map(|p| parse_key(file, "matrixPodOrder", p))
            .collect::<Result<Vec<_>, _>>()?;
        let n = pods.len();
        let mut pod_labels = BTreeMap::new();
        for (k, v) in &raw.initial_state.pods {
            pod_labels.insert(parse_key(file, "initialState.pods", k)?, v.labels.clone());
        }
        for p in &pods {
            if !pod_labels.contains_key(p) {
                return Err(ConformanceError::Format {
                    file: file.into(),
                    message: format!("matrixPodOrder names {p}, which initialState.pods lacks"),
                });
            }
        }
        let mut cases = Vec::new();
        for rc in raw.cases {
            let case_err = |message: String| ConformanceError::Case {
                file: file.into(),
                case: rc.id.clone(),
                message,
            };
            let mut steps = Vec::new();
            for (si, rs) in rc.steps.into_iter().enumerate() {
                let mut probes = Vec::new();
                for (pi, rp) in rs.probe.into_iter().enumerate() {
                    if rp.expect.len() != n || rp.expect.iter().any(|row| row.chars().count() != n)
                    {
                        return Err(case_err(format!(
                            "step {} probe {}: expect must be {n} rows of {n} characters",
                            si + 1,
                            pi + 1
                        )));
                    }
                    let mut expect = Vec::new();
                    for row in &rp.expect {
                        let cells = row
                            .chars()
                            .map(|c| match c {
                                '.' => Ok(true),
                                'X' => Ok(false),
                                other => Err(case_err(format!(
                                    "step {} probe {}: unexpected cell {other:?} (use . or X)",
                                    si + 1,
                                    pi + 1
                                ))),
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        expect.push(cells);
                    }
                    probes.push(Probe {
                        port: rp.port,
                        protocol: rp.protocol,
                        expect,
                    });
                }
                let mut pod_labels = BTreeMap::new();
                for (k, v) in rs.pod_labels {
                    pod_labels.insert(parse_key(file, "podLabels", &k)?, v);
                }
                let delete = rs
                    .delete
                    .iter()
                    .map(|d| parse_key(file, "delete", d))
                    .collect::<Result<Vec<_>, _>>()?;
                steps.push(Step {
                    description: rs.description,
                    namespace_labels: rs.namespace_labels,
                    pod_labels,
                    delete,
                    apply: rs.apply,
                    probes,
                });
            }
            cases.push(Case {
                id: rc.id,
                name: rc.name,
                served_ports: rc.served_ports,
                steps,
            });
        }
        Ok(CaseFile {
            file: file.into(),
            pods,
            diagonal_asserted: raw.diagonal_asserted,
            namespaces: raw
                .initial_state
                .namespaces
                .into_iter()
                .map(|(k, v)| (k, v.labels))
                .collect(),
            pod_labels,
            cases,
        })
    }

    pub fn probe_count(&self) -> usize {
        self.cases
            .iter()
            .flat_map(|c| &c.steps)
            .map(|s| s.probes.len())
            .sum()
    }
}

/// The engine-level default addresses of the model pods (the lab supplies its own).
pub fn default_addresses(pods: &[Key], family: IpFamily) -> BTreeMap<Key, IpAddr> {
    pods.iter()
        .enumerate()
        .map(|(i, k)| {
            let host = 10 + i as u16;
            let ip = match family {
                IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 1, host as u8)),
                IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(0xfd50, 0xa15a, 0xde, 1, 0, 0, 0, host)),
            };
            (k.clone(), ip)
        })
        .collect()
}

/// The /4 network containing `ip`, canonical (upstream makeLargeCIDRForIP).
fn large_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{}/4", Ipv4Addr::from(u32::from(v4) & 0xf000_0000)),
        IpAddr::V6(v6) => format!("{}/4", Ipv6Addr::from(u128::from(v6) & (0xf << 124))),
    }
}

/// Replaces `{{podIP ns/pod}}`, `{{podHostCIDR ns/pod}}` and `{{largeCIDR ns/pod}}` in
/// every string of `value`.
pub fn substitute(value: &mut Value, ips: &BTreeMap<Key, IpAddr>) -> Result<(), String> {
    match value {
        Value::String(s) => {
            while let Some(start) = s.find("{{") {
                let end = s[start..]
                    .find("}}")
                    .ok_or_else(|| format!("unclosed placeholder in {s:?}"))?
                    + start;
                let inner = s[start + 2..end].trim().to_string();
                let (func, arg) = inner
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| format!("malformed placeholder {{{{{inner}}}}}"))?;
                let key: Key = arg.trim().parse()?;
                let ip = *ips
                    .get(&key)
                    .ok_or_else(|| format!("placeholder names unknown pod {key}"))?;
                let text = match func {
                    "podIP" => ip.to_string(),
                    "podHostCIDR" => format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
                    "largeCIDR" => large_cidr(ip),
                    other => return Err(format!("unknown placeholder function {other:?}")),
                };
                s.replace_range(start..end + 2, &text);
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| substitute(v, ips)),
        Value::Object(map) => map.values_mut().try_for_each(|v| substitute(v, ips)),
        _ => Ok(()),
    }
}

/// One observed cell of a probe matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Allowed,
    Denied,
    /// Not probed, with the reason (e.g. SCTP in a kernel without SCTP sockets).
    Skipped(String),
}

/// Everything a prober needs to know about the run's model.
#[derive(Debug, Clone)]
pub struct RunContext<'a> {
    pub file: &'a CaseFile,
    pub family: IpFamily,
    pub addresses: &'a BTreeMap<Key, IpAddr>,
}

/// Something that turns the current cluster state into observed reachability.
pub trait Prober {
    /// Called when a case starts (e.g. to serve its ports) and after each step's changes,
    /// before its probes (e.g. to apply the rules).
    fn prepare(
        &mut self,
        ctx: &RunContext<'_>,
        case: &Case,
        state: &ClusterState,
    ) -> Result<(), String>;
    /// Returns `observed[src][dst]` for every pair in `ctx.file.pods` order.
    fn probe(
        &mut self,
        ctx: &RunContext<'_>,
        state: &ClusterState,
        probe: &Probe,
    ) -> Result<Vec<Vec<Observed>>, String>;
    /// Called right after [`Prober::probe`], before anything changes, for a cell
    /// (`ctx.file.pods` indexes) whose observation differs from the expectation: what the
    /// prober can tell about why (for a dataplane: the kernel's state for that flow). Only
    /// for the first [`MAX_EXPLAINED`] failures of a run. Default: nothing to tell.
    fn explain(
        &mut self,
        ctx: &RunContext<'_>,
        probe: &Probe,
        src: usize,
        dst: usize,
    ) -> Option<String> {
        let _ = (ctx, probe, src, dst);
        None
    }
}

/// How many failing cells of one [`run`] (the first ones) a prober is asked to explain: an explanation may hold
/// whole rulesets, and a broken dataplane fails hundreds of cells for one reason.
pub const MAX_EXPLAINED: usize = 5;

/// Verdicts from the engine, without packets. SCTP is evaluated like any protocol.
#[derive(Debug, Default)]
pub struct EngineProber;

impl Prober for EngineProber {
    fn prepare(&mut self, _: &RunContext<'_>, _: &Case, _: &ClusterState) -> Result<(), String> {
        Ok(())
    }

    fn probe(
        &mut self,
        ctx: &RunContext<'_>,
        state: &ClusterState,
        probe: &Probe,
    ) -> Result<Vec<Vec<Observed>>, String> {
        let pods = &ctx.file.pods;
        pods.iter()
            .map(|src| {
                pods.iter()
                    .map(|dst| {
                        let flow = Flow {
                            src: Endpoint::Pod(src.clone()),
                            dst: Endpoint::Pod(dst.clone()),
                            protocol: probe.protocol,
                            port: probe.port,
                            family: Some(ctx.family),
                        };
                        state
                            .allows(&flow)
                            .map(|ok| {
                                if ok {
                                    Observed::Allowed
                                } else {
                                    Observed::Denied
                                }
                            })
                            .map_err(|e| e.to_string())
                    })
                    .collect()
            })
            .collect()
    }
}

/// A cell whose observation differs from the expectation.
#[derive(Debug, Clone)]
pub struct Failure {
    pub case: String,
    pub step: usize,
    pub probe: String,
    pub src: Key,
    pub dst: Key,
    pub expected: bool,
    pub observed: Observed,
    /// The prober's explanation ([`Prober::explain`]), multi-line; `None` for the cells
    /// past [`MAX_EXPLAINED`] or when the prober has nothing to say.
    pub detail: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |allowed: bool| if allowed { "allowed" } else { "denied" };
        let observed = match &self.observed {
            Observed::Allowed => "allowed".to_string(),
            Observed::Denied => "denied".to_string(),
            Observed::Skipped(r) => format!("skipped ({r})"),
        };
        write!(
            f,
            "{} step {} probe {}: {} -> {}: expected {}, got {}",
            self.case,
            self.step,
            self.probe,
            self.src,
            self.dst,
            word(self.expected),
            observed
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub failures: Vec<Failure>,
    /// Distinct skip reasons, with counts.
    pub skip_reasons: BTreeMap<String, usize>,
    /// Cases that could not run at all (bad policy, prober error), with the reason.
    pub errors: Vec<String>,
}

impl Report {
    pub fn summary(&self, with_skipped: bool) -> String {
        if with_skipped {
            format!(
                "{} passed, {} failed, {} skipped",
                self.passed, self.failed, self.skipped
            )
        } else {
            format!("{} passed, {} failed", self.passed, self.failed)
        }
    }

    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors.is_empty()
    }
}

/// The model pods as the engine sees them for one case.
fn model_pod(
    key: &Key,
    labels: &Labels,
    case: &Case,
    ip: Option<IpAddr>,
    node: Option<String>,
) -> Pod {
    let mut pod = Pod::new(&key.namespace, &key.name, labels.clone());
    pod.ips = ip.into_iter().collect();
    pod.node = node;
    pod.ports = case
        .served_ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(p.name.clone()),
            port: p.port,
            protocol: p.protocol,
        })
        .collect();
    pod
}

/// Where a [`run_with_progress`] stands after a case.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The case just finished.
    pub case: &'a str,
    /// Cases finished, of `total` selected.
    pub done: usize,
    pub total: usize,
    /// Everything counted so far.
    pub report: &'a Report,
}

/// Runs every case (or those whose id is in `only`) against `prober`.
pub fn run(
    file: &CaseFile,
    family: IpFamily,
    addresses: &BTreeMap<Key, IpAddr>,
    nodes: &BTreeMap<Key, String>,
    only: &[String],
    prober: &mut dyn Prober,
) -> Report {
    run_with_progress(file, family, addresses, nodes, only, prober, &mut |_| {})
}

/// [`run`], calling `on_case` after each case.
pub fn run_with_progress(
    file: &CaseFile,
    family: IpFamily,
    addresses: &BTreeMap<Key, IpAddr>,
    nodes: &BTreeMap<Key, String>,
    only: &[String],
    prober: &mut dyn Prober,
    on_case: &mut dyn FnMut(&Progress<'_>),
) -> Report {
    let ctx = RunContext {
        file,
        family,
        addresses,
    };
    let mut report = Report::default();
    let selected: Vec<&Case> = file
        .cases
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.id))
        .collect();
    for (i, case) in selected.iter().enumerate() {
        if let Err(e) = run_case(&ctx, case, nodes, prober, &mut report) {
            let cells: usize =
                case.steps.iter().map(|s| s.probes.len()).sum::<usize>() * cells_per_probe(file);
            report.failed += cells;
            report.errors.push(format!("{}: {e}", case.id));
        }
        on_case(&Progress {
            case: &case.id,
            done: i + 1,
            total: selected.len(),
            report: &report,
        });
    }
    report
}

/// How many cases [`run`] would run with this `only`.
pub fn selected_cases(file: &CaseFile, only: &[String]) -> usize {
    file.cases
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.id))
        .count()
}

fn cells_per_probe(file: &CaseFile) -> usize {
    let n = file.pods.len();
    if file.diagonal_asserted {
        n * n
    } else {
        n * (n - 1)
    }
}

fn run_case(
    ctx: &RunContext<'_>,
    case: &Case,
    nodes: &BTreeMap<Key, String>,
    prober: &mut dyn Prober,
    report: &mut Report,
) -> Result<(), String> {
    let file = ctx.file;
    let mut state = ClusterState::new();
    let mut pod_labels = file.pod_labels.clone();
    for (name, labels) in &file.namespaces {
        state.upsert_namespace(Namespace::new(name, labels.clone()));
    }
    for (key, labels) in &pod_labels {
        let pod = model_pod(
            key,
            labels,
            case,
            ctx.addresses.get(key).copied(),
            nodes.get(key).cloned(),
        );
        state.upsert_pod(pod);
    }
    for (si, step) in case.steps.iter().enumerate() {
        for (name, labels) in &step.namespace_labels {
            state.upsert_namespace(Namespace::new(name, labels.clone()));
        }
        for (key, labels) in &step.pod_labels {
            pod_labels.insert(key.clone(), labels.clone());
            let pod = model_pod(
                key,
                labels,
                case,
                ctx.addresses.get(key).copied(),
                nodes.get(key).cloned(),
            );
            state.upsert_pod(pod);
        }
        for key in &step.delete {
            state.delete_policy(key);
        }
        for (di, doc) in step.apply.iter().enumerate() {
            let mut doc = doc.clone();
            substitute(&mut doc, ctx.addresses)?;
            let origin = Origin {
                file: format!("{} {} step {}", file.file, case.id, si + 1),
                document: di + 1,
            };
            let loaded = load_document(doc, &origin);
            if let Some(e) = loaded.errors.first() {
                return Err(e.to_string());
            }
            for (_, object) in loaded.objects {
                match object {
                    Object::NetworkPolicy(p) => {
                        state.upsert_policy(p);
                    }
                    other => {
                        state.apply(other);
                    }
                }
            }
        }
        prober.prepare(ctx, case, &state)?;
        for probe in &step.probes {
            let observed = prober.probe(ctx, &state, probe)?;
            let name = format!("{}/{}", probe.port, probe.protocol);
            for (i, src) in file.pods.iter().enumerate() {
                for (j, dst) in file.pods.iter().enumerate() {
                    if i == j && !file.diagonal_asserted {
                        continue;
                    }
                    let expected = probe.expect[i][j];
                    match &observed[i][j] {
                        Observed::Skipped(reason) => {
                            report.skipped += 1;
                            *report.skip_reasons.entry(reason.clone()).or_default() += 1;
                        }
                        o if (*o == Observed::Allowed) == expected => report.passed += 1,
                        o => {
                            report.failed += 1;
                            let detail = if report.failures.len() < MAX_EXPLAINED {
                                prober.explain(ctx, probe, i, j)
                            } else {
                                None
                            };
                            report.failures.push(Failure {
                                case: case.id.clone(),
                                step: si + 1,
                                probe: name.clone(),
                                src: src.clone(),
                                dst: dst.clone(),
                                expected,
                                observed: o.clone(),
                                detail,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
