//! Pictures of connectivity: Graphviz `dot` text (namespaces as clusters, pods and
//! workloads as nodes, external CIDRs as boxes, edges labelled with their ports), and SVG
//! through Graphviz's `dot` when it is installed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use palisade_engine::PortRanges;
use palisade_engine::connlist::{Change, Connection, ConnectionDiff};

/// One edge of a picture.
#[derive(Debug)]
pub struct Edge {
    pub src: String,
    pub dst: String,
    pub label: String,
    /// Extra dot attributes (`color=...`), or empty.
    pub style: String,
}

/// A dot string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn ports_label(p: &PortRanges) -> String {
    if p.is_empty() {
        "-".into()
    } else if p.is_all() {
        "all ports".into()
    } else {
        p.to_string()
    }
}

/// `NS/NAME` endpoints go into their namespace's cluster; anything else (a CIDR) is
/// external. Output is sorted, so the text is stable (golden files).
pub fn render(name: &str, edges: &[Edge], legend: &[(&str, &str)]) -> String {
    let mut namespaces: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut external: Vec<&str> = Vec::new();
    for e in edges {
        for end in [&e.src, &e.dst] {
            match end.split_once('/') {
                Some((ns, _)) if ns.parse::<std::net::IpAddr>().is_err() => {
                    namespaces.entry(ns).or_default().push(end)
                }
                _ => external.push(end),
            }
        }
    }
    let mut out = format!("digraph {} {{\n", quote(name));
    out.push_str("  rankdir=LR;\n  compound=true;\n");
    out.push_str("  node [shape=ellipse, fontname=\"Helvetica\", fontsize=11];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
    for (ns, mut members) in namespaces {
        members.sort();
        members.dedup();
        out.push_str(&format!(
            "  subgraph {} {{\n    label={};\n    style=rounded;\n",
            quote(&format!("cluster_{ns}")),
            quote(&format!("namespace {ns}"))
        ));
        for m in members {
            let short = m.split_once('/').map_or(m, |(_, n)| n);
            out.push_str(&format!("    {} [label={}];\n", quote(m), quote(short)));
        }
        out.push_str("  }\n");
    }
    external.sort();
    external.dedup();
    for x in external {
        out.push_str(&format!(
            "  {} [shape=box, style=dashed, label={}];\n",
            quote(x),
            quote(x)
        ));
    }
    for e in edges {
        let style = if e.style.is_empty() {
            String::new()
        } else {
            format!(", {}", e.style)
        };
        out.push_str(&format!(
            "  {} -> {} [label={}{style}];\n",
            quote(&e.src),
            quote(&e.dst),
            quote(&e.label)
        ));
    }
    if !legend.is_empty() {
        out.push_str("  subgraph cluster_legend {\n    label=\"legend\";\n    style=dotted;\n");
        for (i, (text, style)) in legend.iter().enumerate() {
            out.push_str(&format!(
                "    legend_{i}_a [shape=point, style=invis];\n    legend_{i}_b [shape=plaintext, label={}];\n    legend_{i}_a -> legend_{i}_b [{style}];\n",
                quote(text)
            ));
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// `connlist -o dot`.
pub fn connlist_dot(conns: &[Connection]) -> String {
    let edges: Vec<Edge> = conns
        .iter()
        .map(|c| Edge {
            src: c.src.clone(),
            dst: c.dst.clone(),
            label: ports_label(&c.allowed),
            style: String::new(),
        })
        .collect();
    render("connlist", &edges, &[])
}

const ADDED: &str = "color=\"#1a7f37\", fontcolor=\"#1a7f37\", penwidth=2";
const REMOVED: &str = "color=\"#cf222e\", fontcolor=\"#cf222e\", style=dashed, penwidth=2";
const CHANGED: &str = "color=\"#bf8700\", fontcolor=\"#bf8700\", penwidth=2";
const UNCHANGED: &str = "color=\"#8c959f\", fontcolor=\"#8c959f\"";

/// `diff -o dot`: added edges green, removed red and dashed, changed amber (labelled
/// `old => new`), unchanged grey for context.
pub fn diff_dot(diffs: &[ConnectionDiff]) -> String {
    let edges: Vec<Edge> = diffs
        .iter()
        .map(|d| {
            let (label, style) = match d.change {
                Change::Added => (format!("+ {}", ports_label(&d.new)), ADDED),
                Change::Removed => (format!("- {}", ports_label(&d.old)), REMOVED),
                Change::Changed => (
                    format!("{} => {}", ports_label(&d.old), ports_label(&d.new)),
                    CHANGED,
                ),
                Change::Unchanged => (ports_label(&d.new), UNCHANGED),
            };
            Edge {
                src: d.src.clone(),
                dst: d.dst.clone(),
                label,
                style: style.to_string(),
            }
        })
        .collect();
    render(
        "diff",
        &edges,
        &[
            ("added", ADDED),
            ("removed", REMOVED),
            ("changed", CHANGED),
            ("unchanged", UNCHANGED),
        ],
    )
}

/// SVG of `dot` text, through Graphviz.
pub fn svg(dot: &str) -> anyhow::Result<String> {
    let mut child = match Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "-o svg needs Graphviz's `dot` on PATH (apt-get install graphviz, or \
             scripts/setup.sh); -o dot prints the graph text instead"
        ),
        Err(e) => return Err(e).context("running Graphviz `dot`"),
    };
    child
        .stdin
        .take()
        .context("dot stdin")?
        .write_all(dot.as_bytes())
        .context("writing to Graphviz `dot`")?;
    let out = child.wait_with_output().context("running Graphviz `dot`")?;
    if !out.status.success() {
        bail!(
            "Graphviz `dot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("Graphviz `dot` wrote non-UTF-8 output")
}
