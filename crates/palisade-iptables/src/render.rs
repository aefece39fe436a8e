//! Plans -> `ipset restore` and `iptables-restore --noflush` input, pure.
//!
//! An apply is five steps, ordered so that no packet meets a state that lets through what
//! both the old and the new ruleset deny:
//! 1. `ipset restore` *before*: new peer sets created whole, members added to kept sets,
//!    addresses whose direction is no longer filtered taken out of the dispatch gates (a
//!    full apply: every existing set rebuilt in a temporary set, `swap`ped in at step 4);
//! 2. `iptables-restore --noflush` of the IPv4 `filter` table, then 3. of IPv6: one
//!    transaction each, touching Palisade's chains only (a declared chain is flushed and
//!    refilled; chains no longer used are flushed and deleted). Built-in chains are never
//!    declared, so nothing else in the table is flushed; the one hook rule in `FORWARD` is
//!    inserted by a full apply when it is missing;
//! 4. `ipset restore` *after*: (a full apply: the rebuilt sets swapped in,) addresses of newly filtered directions added to the gates
//!    (their chains exist now), members removed from kept sets, sets no rule names any more
//!    destroyed.
//!
//! If step 2 or 3 fails, step 1 is undone (and step 2 when 3 fails) and the error returned:
//! the previous ruleset stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::plan::{FORWARD_CHAIN, HOOK_COMMENT, PREFIX, Plan, SetDef, Table, short_hash};

/// What the kernel holds of Palisade's objects, read before a full apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KernelView {
    /// Palisade's chains per family ([`crate::Family::index`]).
    pub chains: [BTreeSet<String>; 2],
    /// The hook rules found in `FORWARD` (what follows `-A FORWARD `), per family.
    pub hooks: [Vec<String>; 2],
    /// Palisade's ipsets.
    pub sets: BTreeSet<String>,
    /// The rules of Palisade's chains (what follows `-A CHAIN `), per family: what undoes
    /// a full apply whose other family fails.
    pub rules: [BTreeMap<String, Vec<String>>; 2],
}

impl KernelView {
    /// Reads an `iptables-save -t filter` output into `self` for one family.
    pub fn read_save(&mut self, family_index: usize, save: &str) {
        for line in save.lines() {
            let line = strip_counters(line);
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if name.starts_with(PREFIX) {
                    self.chains[family_index].insert(name.to_string());
                    self.rules[family_index]
                        .entry(name.to_string())
                        .or_default();
                }
            } else if let Some(rest) = line.strip_prefix("-A ")
                && let Some((chain, spec)) = rest.split_once(' ')
                && chain.starts_with(PREFIX)
            {
                self.rules[family_index]
                    .entry(chain.to_string())
                    .or_default()
                    .push(spec.to_string());
            } else if let Some(rest) = line.strip_prefix("-A FORWARD ")
                && rest
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .ends_with(&["-j", FORWARD_CHAIN])
            {
                self.hooks[family_index].push(rest.to_string());
            }
        }
    }
}

/// `[12:720] -A ...` -> `-A ...`.
pub(crate) fn strip_counters(line: &str) -> &str {
    let line = line.trim();
    if line.starts_with('[')
        && let Some(i) = line.find("] ")
    {
        return &line[i + 2..];
    }
    line
}

/// The inputs of one apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// `ipset restore` input run first (may be empty).
    pub ipset_before: String,
    /// `iptables-restore --noflush` input per family, IPv4 first (empty: nothing to do).
    pub restore: [String; 2],
    /// `ipset restore` input run last (may be empty).
    pub ipset_after: String,
    /// Undoes `ipset_before` when a restore fails.
    pub(crate) undo_before: String,
    /// Kernel operations (set commands, chain declarations, rules) in the apply.
    pub operations: usize,
}

impl Rendered {
    /// Every input in the order it runs, with headers: what `apply --dry-run` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let parts = [
            ("ipset restore (before the rules)", &self.ipset_before),
            ("iptables-restore --noflush", &self.restore[0]),
            ("ip6tables-restore --noflush", &self.restore[1]),
            ("ipset restore (after the rules)", &self.ipset_after),
        ];
        for (title, text) in parts {
            let _ = writeln!(s, "### {title}");
            s.push_str(text);
        }
        s
    }
}

/// `PAL-T-<hash>`: the temporary set a set is rebuilt in before the swap.
fn temp_name(name: &str) -> String {
    format!("PAL-T-{}", short_hash(name, 16))
}

pub(crate) fn is_temp_set(name: &str) -> bool {
    name.starts_with("PAL-T-")
}

fn create(s: &mut String, name: &str, set: &SetDef) {
    let _ = writeln!(
        s,
        "create {name} {} family {} hashsize 1024 maxelem 4194304",
        set.kind,
        set.family.ipset()
    );
}

fn adds<'a>(s: &mut String, name: &str, elements: impl IntoIterator<Item = &'a String>) -> usize {
    let mut n = 0;
    for e in elements {
        n += 1;
        let _ = writeln!(s, "add {name} {e}");
    }
    n
}

fn dels<'a>(s: &mut String, name: &str, elements: impl IntoIterator<Item = &'a String>) -> usize {
    let mut n = 0;
    for e in elements {
        n += 1;
        let _ = writeln!(s, "del {name} {e}");
    }
    n
}

/// Rebuilds `name` whole: created and filled in `fill` when it does not exist; else filled
/// in a temporary set (in `fill`, undone by `undo`) and swapped in by `swap`.
fn rebuild(
    fill: &mut String,
    swap: &mut String,
    undo: &mut String,
    name: &str,
    set: &SetDef,
    exists: bool,
) -> usize {
    if !exists {
        create(fill, name, set);
        let _ = writeln!(undo, "destroy {name}");
        return 1 + adds(fill, name, &set.elements);
    }
    let temp = temp_name(name);
    create(fill, &temp, set);
    let _ = writeln!(undo, "destroy {temp}");
    let n = adds(fill, &temp, &set.elements);
    let _ = writeln!(swap, "swap {temp} {name}");
    let _ = writeln!(swap, "destroy {temp}");
    n + 3
}

/// Everything Palisade owns, replacing whatever the kernel holds of it (`kernel`).
pub(crate) fn full(plan: &Plan, kernel: &KernelView) -> Rendered {
    let mut r = Rendered::default();
    let mut ops = 0;
    for name in kernel.sets.iter().filter(|n| is_temp_set(n)) {
        // Left over from an apply that died half-way.
        let _ = writeln!(r.ipset_before, "destroy {name}");
        ops += 1;
    }
    // Existing sets are rebuilt aside and swapped in after the rules: a full apply that the
    // kernel rejects leaves every set as it was.
    let mut swaps = String::new();
    for (name, set) in &plan.sets {
        let exists = kernel.sets.contains(name);
        if SetDef::is_gate(name) {
            if !exists {
                create(&mut r.ipset_before, name, set);
                let _ = writeln!(r.undo_before, "destroy {name}");
                ops += 1;
            }
            let mut fill = String::new();
            ops += rebuild(&mut fill, &mut swaps, &mut String::new(), name, set, true);
            r.ipset_after.push_str(&fill);
        } else {
            ops += rebuild(
                &mut r.ipset_before,
                &mut swaps,
                &mut r.undo_before,
                name,
                set,
                exists,
            );
        }
    }
    r.ipset_after.push_str(&swaps);
    for name in kernel
        .sets
        .iter()
        .filter(|n| !plan.sets.contains_key(*n) && !is_temp_set(n))
    {
        let _ = writeln!(r.ipset_after, "destroy {name}");
        ops += 1;
    }
    for (i, table) in plan.tables.iter().enumerate() {
        let mut s = String::from("*filter\n");
        let stale: Vec<&String> = kernel.chains[i]
            .iter()
            .filter(|c| !table.chains.contains_key(*c))
            .collect();
        for name in table.chains.keys().chain(stale.iter().copied()) {
            let _ = writeln!(s, ":{name} - [0:0]");
            ops += 1;
        }
        for (name, rules) in &table.chains {
            for rule in rules.iter() {
                let _ = writeln!(s, "-A {name} {}", rule.spec);
                ops += 1;
            }
        }
        for name in stale {
            let _ = writeln!(s, "-X {name}");
            ops += 1;
        }
        if kernel.hooks[i].is_empty() {
            let _ = writeln!(s, "{}", hook_insert());
            ops += 1;
        }
        for extra in kernel.hooks[i].iter().skip(1) {
            let _ = writeln!(s, "-D FORWARD {extra}");
            ops += 1;
        }
        s.push_str("COMMIT\n");
        r.restore[i] = s;
    }
    r.operations = ops;
    r
}

/// The hook rule: the first rule of `FORWARD`.
pub(crate) fn hook_insert() -> String {
    format!("-I FORWARD 1 {}", hook_spec())
}

/// The hook rule after `-A FORWARD `: packets of established connections never leave
/// `FORWARD` (the cheapest path for most packets); the rest go to `PAL-FORWARD`.
pub(crate) fn hook_spec() -> String {
    format!(
        "-m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment \"{HOOK_COMMENT}\" -j {FORWARD_CHAIN}"
    )
}

/// One family's table moved from `old` to `new`: changed chains flushed and refilled,
/// gone chains flushed and deleted, in one transaction. Empty when nothing changed.
pub(crate) fn table_update(old: &Table, new: &Table) -> (String, usize) {
    let mut s = String::new();
    let mut ops = 0;
    let changed: Vec<(&String, &std::sync::Arc<Vec<crate::plan::Rule>>)> = new
        .chains
        .iter()
        .filter(|(name, rules)| old.chains.get(*name) != Some(*rules))
        .collect();
    let gone: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    if changed.is_empty() && gone.is_empty() {
        return (s, 0);
    }
    s.push_str("*filter\n");
    for (name, _) in &changed {
        let _ = writeln!(s, ":{name} - [0:0]");
        ops += 1;
    }
    for name in &gone {
        let _ = writeln!(s, ":{name} - [0:0]");
        ops += 1;
    }
    for (name, rules) in &changed {
        for rule in rules.iter() {
            let _ = writeln!(s, "-A {name} {}", rule.spec);
            ops += 1;
        }
    }
    for name in &gone {
        let _ = writeln!(s, "-X {name}");
        ops += 1;
    }
    s.push_str("COMMIT\n");
    (s, ops)
}

/// Moves the kernel from `old` to `new`, touching only what changed.
pub(crate) fn update(old: &Plan, new: &Plan) -> Rendered {
    let mut r = Rendered::default();
    let mut ops = 0;
    for (name, set) in &new.sets {
        let gate = SetDef::is_gate(name);
        match old.sets.get(name) {
            None => {
                // New set: created whole before the rules that name it.
                create(&mut r.ipset_before, name, set);
                let _ = writeln!(r.undo_before, "destroy {name}");
                ops += 1;
                let target = if gate {
                    &mut r.ipset_after
                } else {
                    &mut r.ipset_before
                };
                ops += adds(target, name, &set.elements);
            }
            Some(before) if before != set => {
                let added: Vec<&String> = set.elements.difference(&before.elements).collect();
                let removed: Vec<&String> = before.elements.difference(&set.elements).collect();
                if gate {
                    // Out of the gate before the rules change, in after: in between, the
                    // address is judged by the old chains or not at all (as when unfiltered).
                    ops += dels(&mut r.ipset_before, name, removed.iter().copied());
                    adds(&mut r.undo_before, name, removed.iter().copied());
                    ops += adds(&mut r.ipset_after, name, added);
                } else {
                    // Members join before the rules change, leave after.
                    ops += adds(&mut r.ipset_before, name, added.iter().copied());
                    dels(&mut r.undo_before, name, added.iter().copied());
                    ops += dels(&mut r.ipset_after, name, removed);
                }
            }
            Some(_) => {}
        }
    }
    for (i, (o, n)) in old.tables.iter().zip(&new.tables).enumerate() {
        let (text, n_ops) = table_update(o, n);
        r.restore[i] = text;
        ops += n_ops;
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(r.ipset_after, "destroy {name}");
        ops += 1;
    }
    r.operations = ops;
    r
}

/// Undoes a committed full restore of `plan`'s table in family `i`: Palisade's chains back
/// to what `kernel` held, chains it did not hold deleted, an inserted hook removed.
pub(crate) fn undo_full_table(plan: &Plan, kernel: &KernelView, i: usize) -> String {
    let mut s = String::from("*filter\n");
    let saved = &kernel.rules[i];
    let created: Vec<&String> = plan.tables[i]
        .chains
        .keys()
        .filter(|c| !saved.contains_key(*c))
        .collect();
    if kernel.hooks[i].is_empty() {
        let _ = writeln!(s, "-D FORWARD {}", hook_spec());
    }
    for name in saved.keys().chain(created.iter().copied()) {
        let _ = writeln!(s, ":{name} - [0:0]");
    }
    for (name, rules) in saved {
        for r in rules {
            let _ = writeln!(s, "-A {name} {r}");
        }
    }
    for name in created {
        let _ = writeln!(s, "-X {name}");
    }
    s.push_str("COMMIT\n");
    s
}
