//! # palisade-cli
//!
//! The `palisade` binary: the only crate that knows every layer. It parses arguments,
//! loads manifests, calls the engine and prints. It must not make semantic decisions of
//! its own: every verdict comes from `palisade-engine`.
//!
//! Exit codes: 0 = success (valid, allowed, all passed, no findings); 1 = the check said
//! no (invalid objects, a denied flow in `explain`, failed conformance cells, lint
//! findings); 2 = the command could not run (bad arguments, unreadable or invalid input).

mod agent;
mod analysis;
mod dataplane;
mod diff;
mod graph;
mod live;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "Kubernetes NetworkPolicy engine: analysis, enforcement, explanations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate manifests as the API server would; report every error.
    Validate(analysis::InputArgs),
    /// Pod-to-pod reachability table ('.' allowed, 'X' denied).
    Matrix(analysis::MatrixArgs),
    /// The verdict for one flow and the reasoning behind it.
    Explain(analysis::ExplainArgs),
    /// Every allowed connection between pods/workloads and the external CIDRs of ipBlocks.
    Connlist(analysis::ConnlistArgs),
    /// The connectivity difference between two sets of manifests (exit 1 when it changed).
    Diff(diff::DiffArgs),
    /// Policies that are valid but probably wrong.
    Lint(analysis::LintArgs),
    /// Run a conformance case file against the engine.
    Conformance(analysis::ConformanceArgs),
    /// Compile one node's rules and apply them (or print them with --dry-run).
    Apply(dataplane::ApplyArgs),
    /// The lab: a cluster of network namespaces on this machine (root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Build a lab, enforce the bundled story step by step, show packets vs predictions.
    Demo(dataplane::DemoArgs),
    /// Run the node agent: watch the cluster, enforce for this node's pods.
    Agent(agent::AgentArgs),
    /// Follow a running agent's verdict events (like `kubectl logs -f`).
    Events(live::EventsArgs),
    /// A running agent's busiest allowing rules and most-dropping endpoints.
    Top(live::TopArgs),
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Run a conformance case file with real packets through a dataplane.
    Conformance(dataplane::LabConformanceArgs),
    /// Remove every lab network namespace left behind (palisade-*).
    Down,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(a) => analysis::validate(&a),
        Command::Matrix(a) => analysis::matrix(&a),
        Command::Explain(a) => analysis::explain(&a),
        Command::Connlist(a) => analysis::connlist(&a),
        Command::Diff(a) => diff::diff(&a),
        Command::Lint(a) => analysis::lint(&a),
        Command::Conformance(a) => analysis::conformance(&a),
        Command::Apply(a) => dataplane::apply(&a),
        Command::Lab(LabCommand::Conformance(a)) => dataplane::lab_conformance(&a),
        Command::Lab(LabCommand::Down) => dataplane::lab_down(),
        Command::Demo(a) => dataplane::demo(&a),
        Command::Agent(a) => agent::agent(&a),
        Command::Events(a) => live::events(&a),
        Command::Top(a) => live::top(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
