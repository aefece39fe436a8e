//! The one seam to the kernel: `iptables-restore`/`-save` (either backend) and `ipset
//! restore`/`save`. [`SystemIptables`] runs the real tools (optionally inside a network
//! namespace); [`FakeIptables`] interprets what Palisade emits, for tests without root.

use palisade_ir::events::EventSource;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::plan::Family;

/// Errors of running the tools; the message names the command and carries its stderr.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("verdict events: {0}")]
    Events(String),
}

/// Which iptables backend the `iptables-*` tools drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IptablesMode {
    /// The x_tables kernel interface (`iptables-legacy`).
    Legacy,
    /// nf_tables through the xtables compatibility layer (`iptables-nft`).
    Nft,
}

impl IptablesMode {
    /// The dataplane's name in errors and metrics.
    pub fn backend_name(self) -> &'static str {
        match self {
            IptablesMode::Legacy => "iptables-legacy",
            IptablesMode::Nft => "iptables-nft",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            IptablesMode::Legacy => "legacy",
            IptablesMode::Nft => "nft",
        }
    }
}

/// Runs the tools. Each `restore` is one transaction of one family's `filter` table: it
/// applies whole or not at all. `ipset restore` is not atomic: it stops at the first error.
pub trait IptablesExecutor {
    /// The iptables backend in use.
    fn mode(&self) -> IptablesMode;
    /// `iptables-restore --noflush` (or `ip6tables-`) with `input` on stdin.
    fn restore(&mut self, family: Family, input: &str) -> Result<(), IptablesError>;
    /// `iptables-save -t filter -c` (or `ip6tables-`): rules with their counters.
    fn save(&mut self, family: Family) -> Result<String, IptablesError>;
    /// `ipset -exist restore` with `input` on stdin.
    fn ipset_restore(&mut self, input: &str) -> Result<(), IptablesError>;
    /// `ipset save`.
    fn ipset_save(&mut self) -> Result<String, IptablesError>;
    /// `ipset list -n`: the names of every set.
    fn ipset_names(&mut self) -> Result<Vec<String>, IptablesError>;
    /// A reader of NFLOG `group` in the namespace the tools run in.
    fn open_events(&mut self, group: u16) -> Result<Box<dyn EventSource>, IptablesError> {
        Err(IptablesError::Events(format!(
            "this executor cannot read NFLOG group {group}"
        )))
    }
    /// Another executor for the same kernel, for reading (`save`) from another thread
    /// while this one applies; `None` when there is none (a fake's state lives inside it).
    fn reader(&self) -> Option<Box<dyn IptablesExecutor + Send>> {
        None
    }
}

/// Bound of one tool run (a full apply at 10,000 pods takes well under this).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The real tools, in the current network namespace or (with `netns`) inside a named one
/// through `ip netns exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIptables {
    pub netns: Option<String>,
    pub mode: IptablesMode,
}

impl SystemIptables {
    /// `mode` None: detect the backend the host uses (see [`SystemIptables::detect`]).
    pub fn new(netns: Option<&str>, mode: Option<IptablesMode>) -> SystemIptables {
        let netns = netns.map(str::to_string);
        let mode = mode.unwrap_or_else(|| match SystemIptables::detect(netns.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot detect the iptables backend; using iptables-nft");
                IptablesMode::Nft
            }
        });
        SystemIptables { netns, mode }
    }

    /// The backend the host's other programs use, as kube-proxy's iptables wrapper and
    /// Calico decide: the one whose tables hold more rules (`-A` lines of
    /// `iptables-legacy-save` and `iptables-nft-save`, both families); nf_tables when tied
    /// (a fresh host).
    pub fn detect(netns: Option<&str>) -> Result<IptablesMode, IptablesError> {
        let count = |mode: IptablesMode| -> Result<usize, IptablesError> {
            let mut n = 0;
            for family in Family::BOTH {
                let tool = format!("{}-{}-save", family.command(), mode.suffix());
                let out = run(netns, &tool, &[], None)?;
                n += out.lines().filter(|l| l.starts_with("-A")).count();
            }
            Ok(n)
        };
        let legacy = count(IptablesMode::Legacy)?;
        let nft = count(IptablesMode::Nft)?;
        Ok(if legacy > nft {
            IptablesMode::Legacy
        } else {
            IptablesMode::Nft
        })
    }

    fn tool(&self, family: Family, what: &str) -> String {
        format!("{}-{}-{what}", family.command(), self.mode.suffix())
    }
}

fn describe(netns: Option<&str>, program: &str, args: &[&str]) -> String {
    match netns {
        None => format!("{program} {}", args.join(" ")),
        Some(ns) => format!("ip netns exec {ns} {program} {}", args.join(" ")),
    }
}

/// Runs `program args` (inside `netns`), feeding `input`; returns stdout.
fn run(
    netns: Option<&str>,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, IptablesError> {
    let command = describe(netns, program, args);
    let mut c = match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
    };
    c.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_err = |source| IptablesError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = c.spawn().map_err(spawn_err)?;
    let stdin = child.stdin.take();
    let out = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let (Some(mut pipe), Some(text)) = (stdin, input) {
                // A write error means the tool stopped reading; its status says why.
                let _ = pipe.write_all(text.as_bytes());
            }
        });
        let pid = child.id();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        scope.spawn(move || {
            // Bounded in time: kill this one child (by its own pid) if it hangs.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                finished.recv_timeout(RUN_TIMEOUT)
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        });
        let out = child.wait_with_output();
        let _ = done.send(());
        out
    })
    .map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(IptablesError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        })
    }
}

impl IptablesExecutor for SystemIptables {
    fn mode(&self) -> IptablesMode {
        self.mode
    }

    fn reader(&self) -> Option<Box<dyn IptablesExecutor + Send>> {
        Some(Box::new(self.clone()))
    }

    fn open_events(&mut self, group: u16) -> Result<Box<dyn EventSource>, IptablesError> {
        palisade_nflog::NflogSource::open(self.netns.as_deref(), group)
            .map(|s| Box::new(s) as Box<dyn EventSource>)
            .map_err(|e| IptablesError::Events(e.to_string()))
    }

    fn restore(&mut self, family: Family, input: &str) -> Result<(), IptablesError> {
        let tool = self.tool(family, "restore");
        run(
            self.netns.as_deref(),
            &tool,
            &["--noflush", "-w", "10"],
            Some(input),
        )
        .map(|_| ())
    }

    fn save(&mut self, family: Family) -> Result<String, IptablesError> {
        let tool = self.tool(family, "save");
        run(self.netns.as_deref(), &tool, &["-t", "filter", "-c"], None)
    }

    fn ipset_restore(&mut self, input: &str) -> Result<(), IptablesError> {
        if input.is_empty() {
            return Ok(());
        }
        run(
            self.netns.as_deref(),
            "ipset",
            &["-exist", "restore"],
            Some(input),
        )
        .map(|_| ())
    }

    fn ipset_save(&mut self) -> Result<String, IptablesError> {
        run(self.netns.as_deref(), "ipset", &["save"], None)
    }

    fn ipset_names(&mut self) -> Result<Vec<String>, IptablesError> {
        Ok(run(self.netns.as_deref(), "ipset", &["list", "-n"], None)?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// A stateful stand-in for the tools and the kernel. It interprets the statements Palisade
/// emits: `iptables-restore --noflush` input (`*filter`, `:CHAIN`, `-A`, `-I`, `-D`, `-X`,
/// `COMMIT`) as one all-or-nothing transaction per family, failing where the kernel would
/// (a jump to a missing chain, a set that does not exist or has the other family, deleting
/// a chain that is referenced or holds rules, deleting a rule that is not there); and
/// `ipset -exist restore` (`create`, `add`, `del`, `swap`, `destroy`, `flush`) line by line,
/// stopping at the first error as ipset does. `save` and `ipset_save` print what the
/// real tools print (counters zero), so the same parsing serves both. Foreign chains and
/// sets can be planted with [`FakeIptables::plant_chain`] / [`FakeIptables::plant_set`];
/// failures injected with [`FakeIptables::push_failure`].
#[derive(Debug, Clone)]
pub struct FakeIptables {
    pub mode: IptablesMode,
    /// Every restore input received: (family, input), failed ones included.
    pub restores: Vec<(Family, String)>,
    /// Every ipset restore input received, failed ones included.
    pub ipset_inputs: Vec<String>,
    /// Per family: chain -> rules (built-in chains included).
    tables: [BTreeMap<String, Vec<String>>; 2],
    /// name -> (kind, family keyword, elements)
    sets: BTreeMap<String, (String, String, BTreeSet<String>)>,
    failures: VecDeque<String>,
    ipset_failures: VecDeque<String>,
}

impl Default for FakeIptables {
    fn default() -> FakeIptables {
        FakeIptables::new()
    }
}

const BUILTIN: [&str; 3] = ["INPUT", "FORWARD", "OUTPUT"];
const TARGETS: [&str; 4] = ["ACCEPT", "DROP", "RETURN", "REJECT"];

impl FakeIptables {
    pub fn new() -> FakeIptables {
        let table: BTreeMap<String, Vec<String>> = BUILTIN
            .iter()
            .map(|c| (c.to_string(), Vec::new()))
            .collect();
        FakeIptables {
            mode: IptablesMode::Nft,
            restores: Vec::new(),
            ipset_inputs: Vec::new(),
            tables: [table.clone(), table],
            sets: BTreeMap::new(),
            failures: VecDeque::new(),
            ipset_failures: VecDeque::new(),
        }
    }

    /// Makes the next `iptables-restore` fail with `message`, changing nothing.
    pub fn push_failure(&mut self, message: impl Into<String>) {
        self.failures.push_back(message.into());
    }

    /// Makes the next `ipset restore` fail with `message` before its first line.
    pub fn push_ipset_failure(&mut self, message: impl Into<String>) {
        self.ipset_failures.push_back(message.into());
    }

    /// Adds a chain of another program (with `rules`, e.g. `-j ACCEPT`), or rules to a
    /// built-in chain.
    pub fn plant_chain(&mut self, family: Family, chain: &str, rules: &[&str]) {
        self.tables[family.index()]
            .entry(chain.to_string())
            .or_default()
            .extend(rules.iter().map(|r| r.to_string()));
    }

    /// Adds a set of another program.
    pub fn plant_set(&mut self, name: &str, elements: &[&str]) {
        self.sets.insert(
            name.to_string(),
            (
                "hash:ip".into(),
                "inet".into(),
                elements.iter().map(|e| e.to_string()).collect(),
            ),
        );
    }

    /// Deletes every Palisade object behind the dataplane's back (drift).
    pub fn tamper(&mut self) {
        for t in &mut self.tables {
            t.retain(|name, _| !name.starts_with(crate::plan::PREFIX));
            if let Some(fwd) = t.get_mut("FORWARD") {
                fwd.retain(|r| !r.contains(crate::plan::FORWARD_CHAIN));
            }
        }
        self.sets
            .retain(|name, _| !name.starts_with(crate::plan::PREFIX));
    }

    /// The rules of `chain` in `family`, if it exists.
    pub fn chain(&self, family: Family, chain: &str) -> Option<&[String]> {
        self.tables[family.index()].get(chain).map(Vec::as_slice)
    }

    /// The elements of set `name`, if it exists.
    pub fn set(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.sets.get(name).map(|(_, _, e)| e)
    }

    fn failed(command: &str, stderr: String) -> IptablesError {
        IptablesError::Failed {
            command: format!("{command} (fake)"),
            status: "exit status: 1".into(),
            stderr,
        }
    }

    fn restore_into(
        table: &mut BTreeMap<String, Vec<String>>,
        sets: &BTreeMap<String, (String, String, BTreeSet<String>)>,
        family: Family,
        input: &str,
    ) -> Result<(), String> {
        let mut committed = false;
        for (n, raw) in input.lines().enumerate() {
            let line = raw.trim();
            let at = |e: String| format!("line {}: {e}: {line}", n + 1);
            if line.is_empty() || line.starts_with('#') || line == "*filter" {
                continue;
            }
            if line == "COMMIT" {
                committed = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if BUILTIN.contains(&name) {
                    return Err(at("palisade never declares built-in chains".into()));
                }
                table.insert(name.to_string(), Vec::new());
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (op, chain) = (words.first().copied(), words.get(1).copied());
            let Some(chain) = chain else {
                return Err(at("no chain".into()));
            };
            if !table.contains_key(chain) {
                return Err(at(format!("chain {chain} does not exist")));
            }
            match op {
                Some("-A") | Some("-I") => {
                    let (pos, spec_words) = match (op, words.get(2).map(|w| w.parse::<usize>())) {
                        (Some("-I"), Some(Ok(p))) => (Some(p), &words[3..]),
                        (Some("-I"), _) => (Some(1), &words[2..]),
                        _ => (None, &words[2..]),
                    };
                    for pair in spec_words.windows(2) {
                        if matches!(pair[0], "-j" | "-g")
                            && !TARGETS.contains(&pair[1])
                            && !table.contains_key(pair[1])
                        {
                            return Err(at(format!("Couldn't load target `{}'", pair[1])));
                        }
                    }
                    for w in spec_words.windows(3) {
                        if w[0] == "--match-set" {
                            match sets.get(w[1]) {
                                None => {
                                    return Err(at(format!("Set {} doesn't exist", w[1])));
                                }
                                Some((_, fam, _)) if fam != family.ipset() => {
                                    return Err(at(format!("set {} is of family {fam}", w[1])));
                                }
                                Some(_) => {}
                            }
                        }
                    }
                    let spec = spec_words.join(" ");
                    let rules = table.get_mut(chain).ok_or("chain vanished")?;
                    match pos {
                        Some(p) if p >= 1 && p <= rules.len() + 1 => rules.insert(p - 1, spec),
                        Some(p) => return Err(at(format!("index {p} out of range"))),
                        None => rules.push(spec),
                    }
                }
                Some("-D") => {
                    let spec = words[2..].join(" ");
                    let rules = table.get_mut(chain).ok_or("chain vanished")?;
                    let i = rules
                        .iter()
                        .position(|r| *r == spec)
                        .ok_or_else(|| at("Bad rule (does a matching rule exist?)".into()))?;
                    rules.remove(i);
                }
                Some("-X") => {
                    if BUILTIN.contains(&chain) {
                        return Err(at("cannot delete a built-in chain".into()));
                    }
                    if !table[chain].is_empty() {
                        return Err(at("Directory not empty".into()));
                    }
                    let referenced = table.iter().filter(|(n, _)| *n != chain).any(|(_, rs)| {
                        rs.iter().any(|r| {
                            r.split_whitespace()
                                .collect::<Vec<_>>()
                                .windows(2)
                                .any(|p| matches!(p[0], "-j" | "-g") && p[1] == chain)
                        })
                    });
                    if referenced {
                        return Err(at("Too many links".into()));
                    }
                    table.remove(chain);
                }
                _ => return Err(at("unsupported statement".into())),
            }
        }
        if !committed {
            return Err("no COMMIT".into());
        }
        Ok(())
    }
}

impl IptablesExecutor for FakeIptables {
    fn mode(&self) -> IptablesMode {
        self.mode
    }

    fn restore(&mut self, family: Family, input: &str) -> Result<(), IptablesError> {
        let command = format!("{}-restore --noflush", family.command());
        self.restores.push((family, input.to_string()));
        if let Some(message) = self.failures.pop_front() {
            return Err(FakeIptables::failed(&command, message));
        }
        let mut next = self.tables[family.index()].clone();
        FakeIptables::restore_into(&mut next, &self.sets, family, input)
            .map_err(|e| FakeIptables::failed(&command, e))?;
        self.tables[family.index()] = next;
        Ok(())
    }

    fn save(&mut self, family: Family) -> Result<String, IptablesError> {
        let table = &self.tables[family.index()];
        let mut s = String::from("*filter\n");
        for name in BUILTIN {
            s.push_str(&format!(":{name} ACCEPT [0:0]\n"));
        }
        for name in table.keys().filter(|n| !BUILTIN.contains(&n.as_str())) {
            s.push_str(&format!(":{name} - [0:0]\n"));
        }
        for (name, rules) in table {
            for r in rules {
                s.push_str(&format!("[0:0] -A {name} {r}\n"));
            }
        }
        s.push_str("COMMIT\n");
        Ok(s)
    }

    fn ipset_restore(&mut self, input: &str) -> Result<(), IptablesError> {
        self.ipset_inputs.push(input.to_string());
        if let Some(message) = self.ipset_failures.pop_front() {
            return Err(FakeIptables::failed("ipset restore", message));
        }
        for (n, raw) in input.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let w: Vec<&str> = line.split_whitespace().collect();
            let err = |e: &str| {
                FakeIptables::failed("ipset restore", format!("line {}: {e}: {line}", n + 1))
            };
            let name = w.get(1).copied().ok_or_else(|| err("no set name"))?;
            match w[0] {
                "create" => {
                    let kind = w.get(2).ok_or_else(|| err("no type"))?.to_string();
                    let family = w
                        .iter()
                        .position(|x| *x == "family")
                        .and_then(|i| w.get(i + 1))
                        .map_or("inet".to_string(), |f| f.to_string());
                    match self.sets.get(name) {
                        Some((k, f, _)) if *k == kind && *f == family => {}
                        Some(_) => return Err(err("set with the same name already exists")),
                        None => {
                            self.sets
                                .insert(name.to_string(), (kind, family, BTreeSet::new()));
                        }
                    }
                }
                "add" | "del" => {
                    let e = w.get(2).ok_or_else(|| err("no element"))?.to_string();
                    let set = self
                        .sets
                        .get_mut(name)
                        .ok_or_else(|| err("The set with the given name does not exist"))?;
                    let v6 = e.contains(':');
                    if v6 != (set.1 == "inet6") {
                        return Err(err("element of the other family"));
                    }
                    if e.ends_with("/0") {
                        return Err(err("The value of the CIDR parameter is invalid"));
                    }
                    if w[0] == "add" {
                        set.2.insert(e);
                    } else {
                        set.2.remove(&e);
                    }
                }
                "swap" => {
                    let other = w.get(2).ok_or_else(|| err("no second set"))?;
                    let (a, b) = (self.sets.get(name).cloned(), self.sets.get(*other).cloned());
                    match (a, b) {
                        (Some(a), Some(b)) if a.0 == b.0 && a.1 == b.1 => {
                            self.sets.insert(name.to_string(), b);
                            self.sets.insert(other.to_string(), a);
                        }
                        (Some(_), Some(_)) => return Err(err("sets of different types")),
                        _ => return Err(err("The set with the given name does not exist")),
                    }
                }
                "flush" => {
                    self.sets
                        .get_mut(name)
                        .ok_or_else(|| err("The set with the given name does not exist"))?
                        .2
                        .clear();
                }
                "destroy" => {
                    let needle = format!("--match-set {name} ");
                    let used = self
                        .tables
                        .iter()
                        .flat_map(|t| t.values())
                        .flatten()
                        .any(|r| r.contains(&needle));
                    if used {
                        return Err(err(
                            "Set cannot be destroyed: it is in use by a kernel component",
                        ));
                    }
                    self.sets
                        .remove(name)
                        .ok_or_else(|| err("The set with the given name does not exist"))?;
                }
                _ => return Err(err("unsupported command")),
            }
        }
        Ok(())
    }

    fn ipset_save(&mut self) -> Result<String, IptablesError> {
        let mut s = String::new();
        for (name, (kind, family, elements)) in &self.sets {
            s.push_str(&format!(
                "create {name} {kind} family {family} hashsize 1024 maxelem 4194304 bucketsize 12 initval 0x12345678\n"
            ));
            for e in elements {
                s.push_str(&format!("add {name} {e}\n"));
            }
        }
        Ok(s)
    }

    fn ipset_names(&mut self) -> Result<Vec<String>, IptablesError> {
        Ok(self.sets.keys().cloned().collect())
    }
}
