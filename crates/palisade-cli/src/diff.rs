//! `palisade diff OLD NEW`: the connectivity difference between two sets of manifests,
//! pair by pair (the pairs and classes of `connlist`), for a pull request: a table,
//! `-o json`, `-o md` (a comment), `-o dot`/`svg` (a picture). Exit 1 when connectivity
//! changes, so CI can gate on it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use palisade_engine::connlist::{Change, ConnectionDiff};
use palisade_engine::{ClusterState, PortRanges};
use palisade_model::load::{Loaded, load_texts_with};
use serde_json::{Value, json};

use crate::analysis::{ReadArgs, error_lines, load_state};
use crate::graph;
use crate::output::table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DiffFormat {
    #[default]
    Table,
    Json,
    /// A Markdown table, for a pull-request comment.
    Md,
    /// Graphviz text: added edges green, removed red, changed amber.
    Dot,
    /// The dot picture rendered by Graphviz.
    Svg,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The manifests before: a file or folder, or `REV:PATH` for PATH at a git revision
    /// (`main:deploy/`).
    pub old: String,
    /// The manifests after: a file or folder, or `REV:PATH`.
    pub new: String,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DiffFormat::Table)]
    pub output: DiffFormat,
    /// Also list the pairs whose connectivity did not change (table, json, md).
    #[arg(long)]
    pub show_unchanged: bool,
}

/// A side given as `REV:PATH` (and not an existing path): read from git.
fn git_spec(side: &str) -> Option<(&str, &str)> {
    if Path::new(side).exists() {
        return None;
    }
    side.split_once(':').filter(|(rev, _)| !rev.is_empty())
}

fn git(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("git")
        .args(args)
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The manifest files of PATH at REV (a file, or a folder's `*.yaml|yml|json`, recursively),
/// named `REV:path`; PATH is relative to the current directory, as git takes it.
fn git_files(rev: &str, path: &str) -> anyhow::Result<Vec<(String, String)>> {
    // A bad revision named as such, rather than as the failure of a git plumbing command.
    let out = Command::new("git")
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{tree}}"),
        ])
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if why.is_empty() {
            bail!("no git revision {rev:?} (in {rev}:{path})");
        }
        bail!("no git revision {rev:?} (in {rev}:{path}): {why}");
    }
    // Paths relative to the current directory (`..` included), listed by their full name.
    let listing = git(&[
        "ls-tree",
        "-r",
        "-z",
        "--name-only",
        "--full-name",
        rev,
        "--",
        path,
    ])?;
    let names: Vec<String> = listing
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).to_string())
        .collect();
    // A file named on the command line is read whatever its extension, as on disk.
    let single = names.len() == 1;
    let mut files = Vec::new();
    for name in names {
        let manifest = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
        if !(manifest || single) {
            continue;
        }
        let text = git(&["show", &format!("{rev}:{name}")])?;
        files.push((
            format!("{rev}:{name}"),
            String::from_utf8_lossy(&text).to_string(),
        ));
    }
    if files.is_empty() {
        bail!("no manifest file at {rev}:{path}");
    }
    Ok(files)
}

/// One side, loaded and validated as every analysis command does.
fn side_state(side: &str, read: &ReadArgs) -> anyhow::Result<ClusterState> {
    match git_spec(side) {
        None => Ok(load_state(&[PathBuf::from(side)], read)?.0),
        Some((rev, path)) => {
            let loaded: Loaded = load_texts_with(&git_files(rev, path)?, &read.options());
            for note in &loaded.notes {
                eprintln!("note: {note}");
            }
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            if !loaded.is_ok() {
                for e in error_lines(&loaded) {
                    eprintln!("error: {e}");
                }
                bail!("{} invalid input(s) in {side}", loaded.errors.len());
            }
            if loaded.objects.is_empty() {
                bail!("no object Palisade reads in {side}");
            }
            Ok(ClusterState::from_objects(
                loaded.objects.iter().map(|(_, o)| o),
            ))
        }
    }
}

fn endpoints(state: &ClusterState) -> BTreeSet<String> {
    state.pods().iter().map(|p| p.key.to_string()).collect()
}

/// Why a pair appeared or vanished, when one of its ends did (np-guard's "workload added").
fn note(d: &ConnectionDiff, only_old: &BTreeSet<String>, only_new: &BTreeSet<String>) -> String {
    let mut notes = Vec::new();
    for end in [&d.src, &d.dst] {
        if only_new.contains(end) {
            notes.push(format!("{end} is new"));
        } else if only_old.contains(end) {
            notes.push(format!("{end} is gone"));
        }
    }
    notes.join(", ")
}

fn ranges_json(p: &PortRanges) -> Value {
    if p.is_all() {
        json!("all")
    } else {
        Value::Array(
            p.iter()
                .map(
                    |(proto, from, to)| json!({"protocol": proto.as_str(), "from": from, "to": to}),
                )
                .collect(),
        )
    }
}

fn summary(diffs: &[ConnectionDiff]) -> (usize, usize, usize) {
    let count = |c| diffs.iter().filter(|d| d.change == c).count();
    (
        count(Change::Added),
        count(Change::Removed),
        count(Change::Changed),
    )
}

pub fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let old = side_state(&args.old, &args.read)?;
    let new = side_state(&args.new, &args.read)?;
    let all = palisade_engine::connlist::diff(&old, &new);
    let (old_eps, new_eps) = (endpoints(&old), endpoints(&new));
    let only_old: BTreeSet<String> = old_eps.difference(&new_eps).cloned().collect();
    let only_new: BTreeSet<String> = new_eps.difference(&old_eps).cloned().collect();
    let changed = all.iter().any(|d| d.change != Change::Unchanged);
    let shown: Vec<&ConnectionDiff> = all
        .iter()
        .filter(|d| args.show_unchanged || d.change != Change::Unchanged)
        .collect();
    let (added, removed, modified) = summary(&all);
    let headline = if changed {
        format!(
            "connectivity changed: {added} added, {removed} removed, {modified} changed \
             connection(s)"
        )
    } else {
        "connectivity unchanged".to_string()
    };
    match args.output {
        DiffFormat::Table => {
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|d| {
                    vec![
                        d.change.as_str().to_string(),
                        d.src.clone(),
                        d.dst.clone(),
                        graph::ports_label(&d.old),
                        graph::ports_label(&d.new),
                        note(d, &only_old, &only_new),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                print!(
                    "{}",
                    table(&["DIFF", "SRC", "DST", "OLD", "NEW", "NOTE"], &rows)
                );
            }
            println!("{headline}");
        }
        DiffFormat::Json => {
            let list: Vec<Value> = shown
                .iter()
                .map(|d| {
                    let mut v = json!({
                        "diff": d.change.as_str(),
                        "src": d.src,
                        "dst": d.dst,
                        "old": ranges_json(&d.old),
                        "new": ranges_json(&d.new),
                    });
                    let n = note(d, &only_old, &only_new);
                    if !n.is_empty() {
                        v["note"] = json!(n);
                    }
                    v
                })
                .collect();
            let value = json!({
                "changed": changed,
                "summary": {"added": added, "removed": removed, "changed": modified},
                "connections": list,
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        DiffFormat::Md => print!(
            "{}",
            markdown(
                &args.old, &args.new, &shown, &headline, &only_old, &only_new
            )
        ),
        DiffFormat::Dot => print!("{}", graph::diff_dot(&all)),
        DiffFormat::Svg => print!("{}", graph::svg(&graph::diff_dot(&all))?),
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A Markdown cell: pipes escaped, code-formatted.
fn md_code(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("`{}`", s.replace('|', "\\|").replace('`', "'"))
    }
}

fn markdown(
    old: &str,
    new: &str,
    shown: &[&ConnectionDiff],
    headline: &str,
    only_old: &BTreeSet<String>,
    only_new: &BTreeSet<String>,
) -> String {
    let mut out = format!(
        "### Palisade: NetworkPolicy connectivity diff\n\n{} → {}: **{headline}**\n",
        md_code(old),
        md_code(new)
    );
    if shown.is_empty() {
        return out;
    }
    out.push_str("\n| | diff | source | destination | before | after | note |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for d in shown {
        let sign = match d.change {
            Change::Added => "🟢",
            Change::Removed => "🔴",
            Change::Changed => "🟡",
            Change::Unchanged => "⚪",
        };
        let ports = |p: &PortRanges| {
            if p.is_empty() {
                "-".to_string()
            } else {
                md_code(&graph::ports_label(p))
            }
        };
        out.push_str(&format!(
            "| {sign} | {} | {} | {} | {} | {} | {} |\n",
            d.change.as_str(),
            md_code(&d.src),
            md_code(&d.dst),
            ports(&d.old),
            ports(&d.new),
            note(d, only_old, only_new).replace('|', "\\|"),
        ));
    }
    out
}
