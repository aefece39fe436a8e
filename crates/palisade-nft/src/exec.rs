//! The one seam to the kernel: a script goes in, nft's output comes out. [`SystemNft`] runs
//! the real `nft`; [`FakeNft`] records scripts for tests.

use palisade_ir::events::EventSource;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Errors of running nft. The message names the command and carries nft's own error text
/// (which quotes the offending script line).
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft: cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft: `{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("verdict events: {0}")]
    Events(String),
}

/// Runs nft scripts. Every script is one transaction: it applies whole or not at all.
pub trait NftExecutor {
    /// Runs `script` as `nft -f -`; returns what nft printed on stdout.
    fn run(&mut self, script: &str) -> Result<String, NftError>;

    /// `nft list table inet TABLE`, through [`NftExecutor::run`].
    fn list_table(&mut self, table: &str) -> Result<String, NftError> {
        self.run(&format!("list table inet {table}\n"))
    }

    /// `nft --terse list table inet TABLE`: the table without the elements of its sets
    /// and maps, all a counter read needs (a tenth of the full listing at 10,000 policies).
    /// The default lists it in full.
    fn list_table_terse(&mut self, table: &str) -> Result<String, NftError> {
        self.list_table(table)
    }

    /// A reader of NFLOG `group` in the namespace the scripts run in.
    fn open_events(&mut self, group: u16) -> Result<Box<dyn EventSource>, NftError> {
        Err(NftError::Events(format!(
            "this executor cannot read NFLOG group {group}"
        )))
    }

    /// Another executor for the same kernel, for listing from another thread while this
    /// one applies; `None` when there is none (a fake's state lives inside it).
    fn reader(&self) -> Option<Box<dyn NftExecutor + Send>> {
        None
    }
}

/// The real nft binary, in the current network namespace or (with `netns`) inside a named
/// one, through `ip netns exec NS nft -f -`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemNft {
    /// A namespace as listed by `ip netns list`; `None` is the caller's own.
    pub netns: Option<String>,
}

impl SystemNft {
    pub fn new() -> SystemNft {
        SystemNft { netns: None }
    }

    pub fn in_netns(name: impl Into<String>) -> SystemNft {
        SystemNft {
            netns: Some(name.into()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        match &self.netns {
            None => {
                let mut c = Command::new("nft");
                c.args(args);
                c
            }
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), "nft"]).args(args);
                c
            }
        }
    }

    fn describe(&self, args: &[&str]) -> String {
        match &self.netns {
            None => format!("nft {}", args.join(" ")),
            Some(ns) => format!("ip netns exec {ns} nft {}", args.join(" ")),
        }
    }

    /// Runs nft with `args` (no script); returns stdout.
    pub fn run_args(&self, args: &[&str]) -> Result<String, NftError> {
        let command = self.describe(args);
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NftError::Spawn {
                command: command.clone(),
                source,
            })?;
        finish(command, out)
    }

    /// `nft -c -f -`: the kernel checks the script in a transaction that is then aborted.
    pub fn check(&self, script: &str) -> Result<String, NftError> {
        self.run_script(&["-c", "-f", "-"], script)
    }

    fn run_script(&self, args: &[&str], script: &str) -> Result<String, NftError> {
        let command = self.describe(args);
        let spawn_err = |source| NftError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let stdin = child.stdin.take();
        // Feed stdin from another thread while this one drains stdout and stderr, so that
        // neither side can block the other on a full pipe.
        let out = std::thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(mut pipe) = stdin {
                    // A write error means nft stopped reading; its exit status says why.
                    let _ = pipe.write_all(script.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(spawn_err)?;
        finish(command, out)
    }
}

fn finish(command: String, out: std::process::Output) -> Result<String, NftError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        })
    }
}

impl NftExecutor for SystemNft {
    fn run(&mut self, script: &str) -> Result<String, NftError> {
        self.run_script(&["-f", "-"], script)
    }

    fn open_events(&mut self, group: u16) -> Result<Box<dyn EventSource>, NftError> {
        palisade_nflog::NflogSource::open(self.netns.as_deref(), group)
            .map(|s| Box::new(s) as Box<dyn EventSource>)
            .map_err(|e| NftError::Events(e.to_string()))
    }

    fn list_table(&mut self, table: &str) -> Result<String, NftError> {
        self.run_args(&["list", "table", "inet", table])
    }

    fn list_table_terse(&mut self, table: &str) -> Result<String, NftError> {
        self.run_args(&["--terse", "list", "table", "inet", table])
    }

    fn reader(&self) -> Option<Box<dyn NftExecutor + Send>> {
        Some(Box::new(self.clone()))
    }
}

/// A stateful stand-in for nft and the kernel: it interprets the statements Palisade
/// renders (tables, chains, rules, sets, maps, elements) into an in-memory table, applies
/// each script as one transaction (all or nothing), and fails where the kernel would
/// (a missing object, a deleted element that is not there, an object still referenced,
/// an element key added twice with another value). `list table` prints the state in a
/// canonical form, so tests compare what an update and a full apply *leave behind*.
/// Failures can also be injected with [`FakeNft::push_failure`].
#[derive(Debug, Default, Clone)]
pub struct FakeNft {
    /// Every script received, in order (including failed ones).
    pub scripts: Vec<String>,
    tables: BTreeMap<String, FakeTable>,
    failures: VecDeque<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct FakeTable {
    chains: BTreeMap<String, Vec<String>>,
    /// name -> (declaration, element key -> whole element)
    sets: BTreeMap<String, (String, BTreeMap<String, String>)>,
}

impl FakeNft {
    pub fn new() -> FakeNft {
        FakeNft::default()
    }

    /// Makes the next script fail as nft would, with `message` as stderr (and no change).
    pub fn push_failure(&mut self, message: impl Into<String>) {
        self.failures.push_back(message.into());
    }

    pub fn last(&self) -> Option<&str> {
        self.scripts.last().map(String::as_str)
    }

    /// The canonical text of a table, or `None` when it does not exist.
    pub fn table(&self, name: &str) -> Option<String> {
        self.tables.get(name).map(FakeTable::dump)
    }

    fn failed(stderr: String) -> NftError {
        NftError::Failed {
            command: "nft -f - (fake)".to_string(),
            status: "exit status: 1".to_string(),
            stderr,
        }
    }
}

impl FakeTable {
    fn dump(&self) -> String {
        let mut out = String::new();
        for (name, (decl, elements)) in &self.sets {
            out.push_str(&format!("{decl} {name}\n"));
            for e in elements.values() {
                out.push_str(&format!("\t{e}\n"));
            }
        }
        for (name, rules) in &self.chains {
            out.push_str(&format!("chain {name}\n"));
            for r in rules {
                out.push_str(&format!("\t{r}\n"));
            }
        }
        out
    }

    /// Is `needle` (a chain name, or `@set`) used by a rule of another chain or an element?
    fn referenced(&self, needle: &str) -> bool {
        self.chains
            .iter()
            .filter(|(name, _)| *name != needle)
            .flat_map(|(_, rules)| rules)
            .any(|r| r.split_whitespace().any(|w| w == needle))
            || self
                .sets
                .values()
                .flat_map(|(_, e)| e.values())
                .any(|e| e.split_whitespace().any(|w| w == needle))
    }
}

/// Splits a script into statements: `#` lines dropped, lines joined while braces are open.
fn statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    for line in script.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(line);
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if depth <= 0 {
            out.push(std::mem::take(&mut current));
            depth = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn element_key(element: &str) -> String {
    element
        .split_once(" : ")
        .map_or(element, |(k, _)| k)
        .trim()
        .to_string()
}

/// `{ a, b }` -> [a, b]
fn brace_list(text: &str) -> Vec<String> {
    let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
    inner
        .split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}

fn apply_statement(
    tables: &mut BTreeMap<String, FakeTable>,
    stmt: &str,
) -> Result<Option<String>, String> {
    let words: Vec<&str> = stmt.split_whitespace().collect();
    let (verb, what) = (
        words.first().copied().unwrap_or(""),
        words.get(1).copied().unwrap_or(""),
    );
    if what == "table" {
        let name = words.get(3).ok_or("table name missing")?.to_string();
        return match verb {
            "add" | "table" => {
                tables.entry(name).or_default();
                Ok(None)
            }
            "delete" => tables
                .remove(&name)
                .map(|_| None)
                .ok_or(format!("No such file or directory: table {name}")),
            "list" => tables
                .get(&name)
                .map(|t| Some(t.dump()))
                .ok_or(format!("No such file or directory: table {name}")),
            _ => Err(format!("unsupported statement: {stmt}")),
        };
    }
    if words.get(2) != Some(&"inet") {
        return Err(format!("unsupported statement: {stmt}"));
    }
    let table_name = words.get(3).ok_or("table name missing")?;
    let name = words.get(4).ok_or("object name missing")?.to_string();
    let table = tables
        .get_mut(*table_name)
        .ok_or(format!("No such file or directory: table {table_name}"))?;
    let rest = words.get(5..).map(|w| w.join(" ")).unwrap_or_default();
    match (verb, what) {
        ("add", "chain") => {
            table.chains.entry(name).or_default();
        }
        ("add", "rule") => {
            for w in rest.split_whitespace() {
                if let Some(set) = w.strip_prefix('@')
                    && !table.sets.contains_key(set)
                {
                    return Err(format!("No such file or directory: set {set}"));
                }
            }
            for pair in rest.split_whitespace().collect::<Vec<_>>().windows(2) {
                if matches!(pair[0], "goto" | "jump") && !table.chains.contains_key(pair[1]) {
                    return Err(format!("No such file or directory: chain {}", pair[1]));
                }
            }
            table
                .chains
                .get_mut(&name)
                .ok_or(format!("No such file or directory: chain {name}"))?
                .push(rest);
        }
        ("flush", "chain") => table
            .chains
            .get_mut(&name)
            .ok_or(format!("No such file or directory: chain {name}"))?
            .clear(),
        ("delete", "chain") => {
            if table.referenced(&name) {
                return Err(format!(
                    "Device or resource busy: chain {name} is still referenced"
                ));
            }
            table
                .chains
                .remove(&name)
                .ok_or(format!("No such file or directory: chain {name}"))?;
        }
        ("add", "set" | "map") => {
            let body = rest.trim().trim_start_matches('{').trim_end_matches('}');
            let (decl_part, elements) = match body.split_once("elements =") {
                Some((d, e)) => (d, brace_list(e)),
                None => (body, Vec::new()),
            };
            let decl = format!(
                "{what} {}",
                decl_part.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            let (existing_decl, set) = table
                .sets
                .entry(name.clone())
                .or_insert_with(|| (decl.clone(), BTreeMap::new()));
            if *existing_decl != decl {
                return Err(format!(
                    "File exists: {name} is declared as `{existing_decl}`"
                ));
            }
            for e in elements {
                let key = element_key(&e);
                if set.get(&key).is_some_and(|old| *old != e) {
                    return Err(format!("File exists: element {key} of {name}"));
                }
                set.insert(key, e);
            }
        }
        ("flush", "set" | "map") => table
            .sets
            .get_mut(&name)
            .ok_or(format!("No such file or directory: {what} {name}"))?
            .1
            .clear(),
        ("delete", "set" | "map") => {
            if table.referenced(&format!("@{name}")) {
                return Err(format!(
                    "Device or resource busy: {what} {name} is still referenced"
                ));
            }
            table
                .sets
                .remove(&name)
                .ok_or(format!("No such file or directory: {what} {name}"))?;
        }
        ("delete", "element") => {
            let set = &mut table
                .sets
                .get_mut(&name)
                .ok_or(format!("No such file or directory: set {name}"))?
                .1;
            for key in brace_list(&rest) {
                set.remove(&key).ok_or(format!(
                    "No such file or directory: element {key} of {name}"
                ))?;
            }
        }
        _ => return Err(format!("unsupported statement: {stmt}")),
    }
    Ok(None)
}

impl NftExecutor for FakeNft {
    fn run(&mut self, script: &str) -> Result<String, NftError> {
        self.scripts.push(script.to_string());
        if let Some(stderr) = self.failures.pop_front() {
            return Err(FakeNft::failed(stderr));
        }
        let mut next = self.tables.clone();
        let mut output = String::new();
        for stmt in statements(script) {
            match apply_statement(&mut next, &stmt) {
                Ok(Some(out)) => output.push_str(&out),
                Ok(None) => {}
                Err(e) => return Err(FakeNft::failed(format!("Error: {e}\n{stmt}"))),
            }
        }
        self.tables = next;
        Ok(output)
    }
}
