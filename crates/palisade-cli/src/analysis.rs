//! Offline analysis commands over manifests on disk: validate, matrix, explain, connlist,
//! lint, conformance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use palisade_conformance::{CaseFile, EngineProber, default_addresses};
use palisade_engine::connlist::Connection;
use palisade_engine::verdict::SideVerdict;
use palisade_engine::{ClusterState, Endpoint, Flow};
use palisade_model::load::{Loaded, load_paths_with};
use palisade_model::{FieldValidation, IpFamily, Key, KubeVersion, Options, Protocol};
use serde::Serialize;
use serde_json::{Value, json};

use crate::output::{Format, structured, table};

#[derive(Debug, Args)]
pub struct InputArgs {
    /// Manifest file or folder (recursive); `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// How manifests are read and validated.
#[derive(Debug, Args, Clone)]
pub struct ReadArgs {
    /// Validate as this Kubernetes version does by default (1.NN; default: the newest
    /// supported). E.g. 1.35 still accepts CIDRs with host bits set (StrictIPCIDRValidation).
    #[arg(long = "kubernetes-version", value_name = "1.NN", default_value_t = KubeVersion::NEWEST)]
    pub kubernetes_version: KubeVersion,
    /// Unknown and duplicate fields, as kubectl's flag: strict (an error), warn (one
    /// warning per field, the object is read), ignore.
    #[arg(
        long = "validate",
        value_name = "strict|warn|ignore",
        default_value = "strict"
    )]
    pub validate: FieldValidation,
    /// Analyse as if the policies in audit mode (annotated `palisade.dev/mode: audit`)
    /// were enforced: what enforcing them would change. Without it, they are evaluated as
    /// the agent does (not enforced; `explain` reports what they would deny).
    #[arg(long)]
    pub audit: bool,
}

impl ReadArgs {
    pub fn options(&self) -> Options {
        Options {
            version: self.kubernetes_version,
            fields: self.validate,
        }
    }
}

/// Reads `paths`, printing notes and warnings on stderr.
pub fn read_inputs(paths: &[PathBuf], read: &ReadArgs) -> Loaded {
    let loaded = load_paths_with(paths, &read.options());
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    loaded
}

/// Every error of `loaded`, one line per invalid field, as kubectl prints them.
pub fn error_lines(loaded: &Loaded) -> Vec<String> {
    loaded.errors.iter().flat_map(|e| e.lines()).collect()
}

/// A `PORT/PROTOCOL` argument (`80/TCP`, `53/udp`; protocol defaults to TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortArg {
    pub port: u16,
    pub protocol: Protocol,
}

impl std::str::FromStr for PortArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, protocol) = s.split_once('/').unwrap_or((s, "TCP"));
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {port:?} in {s:?} (expected 1-65535)"))?;
        Ok(PortArg {
            port,
            protocol: protocol.parse()?,
        })
    }
}

impl std::fmt::Display for PortArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Port to probe, `PORT/PROTOCOL`. Repeatable. Default: every container port declared.
    #[arg(long = "port", value_name = "PORT/PROTO")]
    pub ports: Vec<PortArg>,
    /// Address family for pods with addresses of both families.
    #[arg(long, value_parser = parse_family)]
    pub family: Option<IpFamily>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Source: NAMESPACE/POD (or workload name) or an IP address.
    #[arg(long, value_parser = parse_endpoint)]
    pub from: Endpoint,
    /// Destination: NAMESPACE/POD or an IP address.
    #[arg(long, value_parser = parse_endpoint)]
    pub to: Endpoint,
    /// `PORT/PROTOCOL`.
    #[arg(long, value_name = "PORT/PROTO")]
    pub port: PortArg,
    #[arg(long, value_parser = parse_family)]
    pub family: Option<IpFamily>,
}

#[derive(Debug, Args)]
pub struct ConnlistArgs {
    /// Manifest file or folder (recursive); `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Output format: a table, JSON, YAML, Graphviz text, or SVG (needs Graphviz).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ConnlistFormat::Table)]
    pub output: ConnlistFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ConnlistFormat {
    #[default]
    Table,
    Json,
    Yaml,
    Dot,
    Svg,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Manifest file or folder (recursive); `-` reads stdin. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "live"
    )]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Instead of manifests: the rules a running agent (--agent) enforces that allowed no
    /// new connection over --period, as candidates for removal.
    #[arg(long, requires = "agent", conflicts_with = "paths")]
    pub live: bool,
    /// The agent's HTTP address, e.g. http://127.0.0.1:9464 (with --live).
    #[arg(long)]
    pub agent: Option<String>,
    /// How long to watch the counters, in seconds (with --live).
    #[arg(long, default_value_t = 60)]
    pub period: u64,
}

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// A case file in the format of testdata/conformance/README.md.
    #[arg(long)]
    pub cases: PathBuf,
    /// Run with IPv4 or IPv6 pod addresses (default: both, one after the other).
    #[arg(long, value_parser = parse_family)]
    pub family: Option<IpFamily>,
    /// Only these case ids (repeatable).
    #[arg(long = "case")]
    pub only: Vec<String>,
    /// Print every failing cell, not only the first 50.
    #[arg(long)]
    pub verbose: bool,
}

fn parse_family(s: &str) -> Result<IpFamily, String> {
    s.parse()
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse()
}

/// Loads and validates; any error stops the command (never a half-analysed input), and so
/// does an input without any object (an empty analysis would look like a clean one).
pub fn load_state(paths: &[PathBuf], read: &ReadArgs) -> anyhow::Result<(ClusterState, Loaded)> {
    let loaded = read_inputs(paths, read);
    if !loaded.is_ok() {
        for e in error_lines(&loaded) {
            eprintln!("error: {e}");
        }
        bail!(
            "{} invalid input(s); run `palisade validate` for details",
            loaded.errors.len()
        );
    }
    if loaded.objects.is_empty() {
        bail!("{}", no_objects(paths, &loaded));
    }
    let state = if read.audit {
        let enforced: Vec<palisade_model::Object> = loaded
            .objects
            .iter()
            .map(|(_, o)| match o {
                palisade_model::Object::NetworkPolicy(p) => {
                    palisade_model::Object::NetworkPolicy(palisade_model::NetworkPolicy {
                        audit: false,
                        ..p.clone()
                    })
                }
                other => other.clone(),
            })
            .collect();
        ClusterState::from_objects(&enforced)
    } else {
        ClusterState::from_objects(loaded.objects.iter().map(|(_, o)| o))
    };
    Ok((state, loaded))
}

fn no_objects(paths: &[PathBuf], loaded: &Loaded) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    format!(
        "no object Palisade reads in {} ({} document(s) skipped)",
        names.join(", "),
        loaded.notes.len()
    )
}

pub fn validate(args: &InputArgs) -> anyhow::Result<ExitCode> {
    let loaded = load_paths_with(&args.paths, &args.read.options());
    let errors = error_lines(&loaded);
    let report = json!({
        "objects": loaded.objects.len(),
        "errors": errors,
        "warnings": loaded.warnings,
        "notes": loaded.notes,
    });
    if !structured(args.output, &report)? {
        for note in &loaded.notes {
            println!("note: {note}");
        }
        for w in &loaded.warnings {
            println!("warning: {w}");
        }
        for e in &errors {
            println!("error: {e}");
        }
        println!(
            "{} valid object(s), {} error(s)",
            loaded.objects.len(),
            errors.len()
        );
    }
    if !errors.is_empty() {
        return Ok(ExitCode::from(1));
    }
    if loaded.objects.is_empty() {
        bail!("{}", no_objects(&args.paths, &loaded));
    }
    Ok(ExitCode::SUCCESS)
}

fn default_ports(state: &ClusterState) -> Vec<PortArg> {
    let ports: BTreeSet<PortArg> = state
        .pods()
        .iter()
        .flat_map(|p| {
            p.ports.iter().map(|c| PortArg {
                port: c.port,
                protocol: c.protocol,
            })
        })
        .collect();
    if ports.is_empty() {
        vec![PortArg {
            port: 80,
            protocol: Protocol::Tcp,
        }]
    } else {
        ports.into_iter().collect()
    }
}

#[derive(Debug, Serialize)]
struct MatrixOut {
    port: String,
    pods: Vec<String>,
    /// allowed[src][dst]
    allowed: Vec<Vec<bool>>,
    /// audit_denied[src][dst]: allowed, but policies in audit mode would deny it (only when
    /// some cell is).
    #[serde(rename = "auditDenied", skip_serializing_if = "Option::is_none")]
    audit_denied: Option<Vec<Vec<bool>>>,
}

pub fn matrix(args: &MatrixArgs) -> anyhow::Result<ExitCode> {
    let (state, _) = load_state(&args.input.paths, &args.input.read)?;
    let ports = if args.ports.is_empty() {
        default_ports(&state)
    } else {
        args.ports.clone()
    };
    let pods: Vec<Key> = state.pods().iter().map(|p| p.key.clone()).collect();
    let mut out = Vec::new();
    for port in &ports {
        let mut allowed = Vec::new();
        let mut audit_denied = Vec::new();
        for src in &pods {
            let mut row = Vec::new();
            let mut audit_row = Vec::new();
            for dst in &pods {
                let flow = Flow {
                    src: Endpoint::Pod(src.clone()),
                    dst: Endpoint::Pod(dst.clone()),
                    protocol: port.protocol,
                    port: port.port,
                    family: args.family,
                };
                let explanation = state.explain(&flow)?;
                row.push(explanation.allowed());
                audit_row.push(
                    [&explanation.egress, &explanation.ingress]
                        .iter()
                        .any(|s| matches!(s, SideVerdict::AuditDenied { .. })),
                );
            }
            allowed.push(row);
            audit_denied.push(audit_row);
        }
        let any_audit = audit_denied.iter().flatten().any(|a| *a);
        out.push(MatrixOut {
            port: port.to_string(),
            pods: pods.iter().map(ToString::to_string).collect(),
            allowed,
            audit_denied: any_audit.then_some(audit_denied),
        });
    }
    if !structured(args.input.output, &json!({ "matrices": out }))? {
        for (i, m) in out.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!(
                "{}",
                render_matrix_with_audit(&m.port, &m.pods, &m.allowed, m.audit_denied.as_deref())
            );
        }
        if out.iter().any(|m| m.audit_denied.is_some()) {
            println!(
                "A: allowed, but policies in audit mode would deny it (--audit shows them enforced)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The upstream e2e layout: a header row of destinations, one row per source.
pub fn render_matrix(title: &str, pods: &[String], allowed: &[Vec<bool>]) -> String {
    render_matrix_with_audit(title, pods, allowed, None)
}

/// [`render_matrix`], with `A` for allowed cells that policies in audit mode would deny.
fn render_matrix_with_audit(
    title: &str,
    pods: &[String],
    allowed: &[Vec<bool>],
    audit_denied: Option<&[Vec<bool>]>,
) -> String {
    let mut rows = Vec::new();
    for (i, src) in pods.iter().enumerate() {
        let mut row = vec![src.clone()];
        row.extend(allowed[i].iter().enumerate().map(|(j, a)| {
            let audit = audit_denied.is_some_and(|m| m[i][j]);
            match (a, audit) {
                (true, true) => "A",
                (true, false) => ".",
                (false, _) => "X",
            }
            .to_string()
        }));
        rows.push(row);
    }
    let mut header = vec![title];
    header.extend(pods.iter().map(String::as_str));
    table(&header, &rows)
}

fn side_json(side: &SideVerdict) -> Value {
    let keys = |k: &[Key]| k.iter().map(ToString::to_string).collect::<Vec<_>>();
    match side {
        SideVerdict::External => json!({"verdict": "allowed", "reason": "external"}),
        SideVerdict::HostNetwork => json!({"verdict": "allowed", "reason": "host-network"}),
        SideVerdict::SelfTraffic => json!({"verdict": "allowed", "reason": "self"}),
        SideVerdict::NotIsolated => json!({"verdict": "allowed", "reason": "not-isolated"}),
        SideVerdict::AuditDenied { audited_by } => json!({
            "verdict": "audit-denied", "reason": "audited-policy-denies", "auditedBy": keys(audited_by),
        }),
        SideVerdict::Allowed {
            isolated_by,
            allowed_by,
        } => json!({
            "verdict": "allowed",
            "reason": "rule",
            "isolatedBy": keys(isolated_by),
            "allowedBy": allowed_by.iter().map(|r| json!({
                "policy": r.policy.to_string(), "direction": r.direction.as_str(), "rule": r.index,
            })).collect::<Vec<_>>(),
        }),
        SideVerdict::Denied { isolated_by } => json!({
            "verdict": "denied", "reason": "no-rule-allows", "isolatedBy": keys(isolated_by),
        }),
    }
}

pub fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let (state, _) = load_state(&args.input.paths, &args.input.read)?;
    // Addresses fix the flow's family; they must agree with each other and with --family.
    let mut family = args.family;
    for e in [&args.from, &args.to] {
        if let Endpoint::Ip(ip) = e {
            let f = IpFamily::of(ip);
            if family.is_some_and(|g| g != f) {
                bail!(
                    "{ip} is {f}, but the flow is {}: both ends and --family must agree",
                    family.unwrap_or(f)
                );
            }
            family = Some(f);
        }
    }
    // An address that a pod holds is that pod.
    let resolve = |e: &Endpoint| match e {
        Endpoint::Ip(ip) => {
            let resolved = state.endpoint_for_ip(*ip);
            if let Endpoint::Pod(k) = &resolved {
                eprintln!(
                    "note: {ip} is the address of pod {k}; explaining the flow as that pod's"
                );
            }
            resolved
        }
        pod => pod.clone(),
    };
    let (src, dst) = (resolve(&args.from), resolve(&args.to));
    let flow = Flow {
        src,
        dst,
        protocol: args.port.protocol,
        port: args.port.port,
        family,
    };
    let e = state.explain(&flow)?;
    let value = json!({
        "from": flow.src.to_string(),
        "to": flow.dst.to_string(),
        "port": flow.port,
        "protocol": flow.protocol.as_str(),
        "family": e.family.to_string(),
        "allowed": e.allowed(),
        "egress": side_json(&e.egress),
        "ingress": side_json(&e.ingress),
    });
    if !structured(args.input.output, &value)? {
        print!("{e}");
    }
    Ok(if e.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The connlist JSON contract (README): `allowed` is "all" or a list of ranges.
pub fn connections_json(conns: &[Connection]) -> Value {
    let list: Vec<Value> = conns
        .iter()
        .map(|c| {
            let allowed = if c.allowed.is_all() {
                json!("all")
            } else {
                Value::Array(
                    c.allowed
                        .iter()
                        .map(
                            |(p, from, to)| json!({"protocol": p.as_str(), "from": from, "to": to}),
                        )
                        .collect(),
                )
            };
            json!({"src": c.src, "dst": c.dst, "allowed": allowed})
        })
        .collect();
    json!({ "connections": list })
}

pub fn connlist(args: &ConnlistArgs) -> anyhow::Result<ExitCode> {
    let (state, _) = load_state(&args.paths, &args.read)?;
    let conns = palisade_engine::connlist::connlist(&state);
    match args.output {
        // Compact and exactly the documented shape.
        ConnlistFormat::Json => println!("{}", serde_json::to_string(&connections_json(&conns))?),
        ConnlistFormat::Yaml => {
            structured(Format::Yaml, &connections_json(&conns))?;
        }
        ConnlistFormat::Dot => print!("{}", crate::graph::connlist_dot(&conns)),
        ConnlistFormat::Svg => print!(
            "{}",
            crate::graph::svg(&crate::graph::connlist_dot(&conns))?
        ),
        ConnlistFormat::Table => {
            let rows: Vec<Vec<String>> = conns
                .iter()
                .map(|c| vec![c.src.clone(), c.dst.clone(), c.allowed.to_string()])
                .collect();
            print!("{}", table(&["SRC", "DST", "ALLOWED"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn lint(args: &LintArgs) -> anyhow::Result<ExitCode> {
    if let (true, Some(agent)) = (args.live, &args.agent) {
        return crate::live::lint_live(agent, std::time::Duration::from_secs(args.period));
    }
    // Invalid objects (e.g. an except outside its cidr) are findings too, so lint reports
    // them instead of stopping.
    let loaded = read_inputs(&args.paths, &args.read);
    if loaded.is_ok() && loaded.objects.is_empty() {
        bail!("{}", no_objects(&args.paths, &loaded));
    }
    let state = ClusterState::from_objects(loaded.objects.iter().map(|(_, o)| o));
    let findings = palisade_engine::lint::lint(&state);
    let errors = error_lines(&loaded);
    let value = json!({
        "errors": errors,
        "findings": findings.iter().map(|f| json!({
            "policy": f.policy.to_string(), "field": f.field, "kind": f.kind.as_str(), "message": f.message,
        })).collect::<Vec<_>>(),
    });
    if !structured(args.output, &value)? {
        for e in &errors {
            println!("error: {e}");
        }
        for f in &findings {
            println!("warning: {f}");
        }
        println!("{} error(s), {} finding(s)", errors.len(), findings.len());
    }
    Ok(if errors.is_empty() && findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn conformance(args: &ConformanceArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.cases)
        .with_context(|| format!("reading {}", args.cases.display()))?;
    let file = CaseFile::parse(&text, &args.cases.display().to_string())?;
    let families = match args.family {
        Some(f) => vec![f],
        None => vec![IpFamily::V4, IpFamily::V6],
    };
    let mut total = palisade_conformance::Report::default();
    let several = families.len() > 1;
    for family in families {
        let addresses = default_addresses(&file.pods, family);
        let report = palisade_conformance::run(
            &file,
            family,
            &addresses,
            &BTreeMap::new(),
            &args.only,
            &mut EngineProber,
        );
        let limit = if args.verbose { usize::MAX } else { 50 };
        for f in report.failures.iter().take(limit) {
            println!("FAIL {family}: {f}");
        }
        for e in &report.errors {
            println!("ERROR {family}: {e}");
        }
        if several {
            println!("{family}: {}", report.summary(false));
        }
        total.passed += report.passed;
        total.failed += report.failed;
        total.errors.extend(report.errors);
    }
    println!("{}", total.summary(false));
    Ok(if total.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
