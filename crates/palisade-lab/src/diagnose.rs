//! Explaining a probe whose outcome disagrees with the engine: what the kernel of each node
//! held and did for that one flow. Read-only towards the dataplane: the lab's own observer
//! table only counts packets (its chains never drop), and everything else is a listing.
//!
//! - [`install_flow_counters`] puts a table `inet palisade_lab_observe` into every node's
//!   netns: before the policy chains (forward hook, priority `filter - 100`, after conntrack)
//!   it counts each TCP/UDP flow's packets by conntrack state (new, or
//!   established/related); after them (`filter + 100`) the packets that were let through.
//!   Flows are keyed by the full 5-tuple, so the probe's source port picks out its packets.
//! - [`flow_counters`], [`conntrack_entries`] and [`ruleset`] read one node's view;
//!   [`explain_probe`] puts them together into the mismatch report of one probe (used by
//!   the lab's enforcer and by the API-driven conformance, each saying what its nodes
//!   applied).
//!
//! Everything here is bounded: one `nft` or `cat` per call, [`crate::RUN_TIMEOUT`] each, and
//! listings cut at [`MAX_LINES`].

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use palisade_model::{IpFamily, Protocol};

use crate::{Lab, LabError, ProbeOutcome, ProbeRequest, ProbeTrace};

/// The observer table's name (in family `inet`, in every node netns).
pub const OBSERVER_TABLE: &str = "palisade_lab_observe";

/// Most lines of one listing (conntrack entries, a ruleset) in a report.
pub const MAX_LINES: usize = 400;

const SET_KINDS: [(&str, &str); 3] = [
    ("new", "before the policy chains, conntrack state new"),
    (
        "est",
        "before the policy chains, conntrack state established or related",
    ),
    ("passed", "after the policy chains (let through)"),
];

fn observer_script() -> String {
    let t = OBSERVER_TABLE;
    let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
    for (kind, _) in SET_KINDS {
        for (fam, addr) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
            // Elements time out (reports read them right after the probe) so a long run
            // does not fill the set; a full set only stops counting new flows (the update
            // rule breaks off), it never drops a packet.
            let _ = writeln!(
                s,
                "\tset {kind}_{fam} {{ type {addr} . {addr} . inet_proto . inet_service . inet_service; \
                 flags dynamic,timeout; timeout 2m; size 131072; counter; }}"
            );
        }
    }
    let key =
        |ip: &str| format!("{{ {ip} saddr . {ip} daddr . meta l4proto . th sport . th dport }}");
    s.push_str(
        "\tchain before_policy {\n\t\ttype filter hook forward priority filter - 100; policy accept;\n",
    );
    for (fam, ip) in [("v4", "ip"), ("v6", "ip6")] {
        let _ = writeln!(
            s,
            "\t\tmeta l4proto {{ tcp, udp }} ct state new update @new_{fam} {}",
            key(ip)
        );
        let _ = writeln!(
            s,
            "\t\tmeta l4proto {{ tcp, udp }} ct state established,related update @est_{fam} {}",
            key(ip)
        );
    }
    s.push_str("\t}\n");
    s.push_str(
        "\tchain after_policy {\n\t\ttype filter hook forward priority filter + 100; policy accept;\n",
    );
    for (fam, ip) in [("v4", "ip"), ("v6", "ip6")] {
        let _ = writeln!(
            s,
            "\t\tmeta l4proto {{ tcp, udp }} update @passed_{fam} {}",
            key(ip)
        );
    }
    s.push_str("\t}\n}\n");
    s
}

fn node_run(
    lab: &Lab,
    node: usize,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, LabError> {
    let out = lab.run_in_node(node, args, stdin)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: args.join(" "),
            reason: format!(
                "{} in {}: {}",
                out.status,
                lab.node_netns(node),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Installs the observer table in every node (replacing an earlier one) and turns on
/// conntrack accounting and timestamps there, so entries show packets and age.
pub fn install_flow_counters(lab: &Lab) -> Result<(), LabError> {
    let script = observer_script();
    for node in 0..lab.node_count() {
        node_run(lab, node, &["nft", "-f", "-"], Some(script.as_bytes()))?;
        // Per-netns sysctls; they exist once conntrack is loaded, which the table's
        // `ct state` just ensured. Best effort: only the report gets poorer without them.
        let _ = lab.run_in_node(
            node,
            &[
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/netfilter/nf_conntrack_acct; \
                 echo 1 > /proc/sys/net/netfilter/nf_conntrack_timestamp",
            ],
            None,
        );
    }
    Ok(())
}

/// One flow as the observer keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl FlowKey {
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
        }
    }
}

/// Packets of one flow (one direction) on one node, as the observer counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowPackets {
    pub new: u64,
    pub established: u64,
    pub passed: u64,
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The packets the observer counted for `flow` on `node`; zeros when it saw none. One
/// `nft get element` per set: cheap however many flows the sets hold.
pub fn flow_counters(lab: &Lab, node: usize, flow: &FlowKey) -> Result<FlowPackets, LabError> {
    let fam = if flow.src.is_ipv4() { "v4" } else { "v6" };
    let key = format!(
        "{{ {} . {} . {} . {} . {} }}",
        flow.src.ip(),
        flow.dst.ip(),
        proto_name(flow.protocol),
        flow.src.port(),
        flow.dst.port()
    );
    let mut packets = FlowPackets::default();
    for (kind, _) in SET_KINDS {
        let set = format!("{kind}_{fam}");
        let args = ["nft", "get", "element", "inet", OBSERVER_TABLE, &set, &key];
        let out = lab.run_in_node(node, &args, None)?;
        let n = if out.status.success() {
            packets_in_listing(&String::from_utf8_lossy(&out.stdout))
        } else if String::from_utf8_lossy(&out.stderr).contains("No such file or directory") {
            // Not in the set: the observer never saw such a packet.
            0
        } else {
            return Err(LabError::Command {
                command: args.join(" "),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        };
        match kind {
            "new" => packets.new = n,
            "est" => packets.established = n,
            _ => packets.passed = n,
        }
    }
    Ok(packets)
}

/// The packet count of the one element an `nft get element` printed
/// (`elements = { ... counter packets 2 bytes 134 ... }`).
fn packets_in_listing(text: &str) -> u64 {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// The conntrack entries of `node` between addresses `a` and `b` (either way round), as
/// the kernel lists them (`/proc/net/nf_conntrack` of the node's netns), IPv6 addresses
/// shortened. Cut at [`MAX_LINES`].
pub fn conntrack_entries(
    lab: &Lab,
    node: usize,
    a: IpAddr,
    b: IpAddr,
) -> Result<Vec<String>, LabError> {
    let text = node_run(lab, node, &["cat", "/proc/net/nf_conntrack"], None)?;
    Ok(filter_conntrack(&text, a, b))
}

fn filter_conntrack(text: &str, a: IpAddr, b: IpAddr) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut first_pair = (None, None);
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| {
                for key in ["src=", "dst="] {
                    if let Some(addr) = w.strip_prefix(key)
                        && let Ok(ip) = addr.parse::<IpAddr>()
                    {
                        if key == "src=" && first_pair.0.is_none() {
                            first_pair.0 = Some(ip);
                        } else if key == "dst=" && first_pair.1.is_none() {
                            first_pair.1 = Some(ip);
                        }
                        return format!("{key}{ip}");
                    }
                }
                w.to_string()
            })
            .collect();
        let hit =
            matches!(first_pair, (Some(s), Some(d)) if (s == a && d == b) || (s == b && d == a));
        if hit {
            if out.len() == MAX_LINES {
                out.push("... (more entries cut)".to_string());
                break;
            }
            out.push(words.join(" "));
        }
    }
    out
}

/// Every table of `node` but the observer's, as `nft list ruleset` prints them (with the
/// rules' counters). Cut at [`MAX_LINES`].
pub fn ruleset(lab: &Lab, node: usize) -> Result<String, LabError> {
    let text = node_run(lab, node, &["nft", "list", "ruleset"], None)?;
    Ok(strip_observer(&text))
}

fn strip_observer(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut lines = 0;
    for line in text.lines() {
        if line.starts_with("table ") {
            skipping = line.contains(OBSERVER_TABLE);
        }
        if skipping {
            continue;
        }
        if lines == MAX_LINES {
            out.push_str("... (cut)\n");
            break;
        }
        out.push_str(line);
        out.push('\n');
        lines += 1;
    }
    out
}

/// Conntrack entries of other flows between the same addresses shown in a report.
const OTHER_CONNTRACK_LINES: usize = 6;

fn proto_word(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Everything the lab can tell about one probe that just ran, for a report: the probe's
/// own timing and source port; per node, what `node_state` says of it (the enforcer's
/// applied generation, an agent's metrics), the conntrack entries between the two
/// addresses (read first: they age), the packets of this exact flow (both directions)
/// before and after the policy chains (needs [`install_flow_counters`]), and, when
/// `rulesets`, the tables in force. Call it right after the probe, before anything
/// changes. Multi-line, bounded (see [`MAX_LINES`]).
pub fn explain_probe(
    lab: &Lab,
    request: &ProbeRequest,
    outcome: &ProbeOutcome,
    trace: &ProbeTrace,
    node_state: &dyn Fn(usize) -> String,
    rulesets: bool,
) -> String {
    let epoch = lab.epoch();
    let at = |t: Instant| format!("+{:.3}s", t.saturating_duration_since(epoch).as_secs_f64());
    let mut s = String::new();
    let source = trace
        .source
        .map_or_else(|| "(no socket address)".to_string(), |a| a.to_string());
    let to = std::net::SocketAddr::new(request.to, request.port);
    let _ = writeln!(
        s,
        "probe {} {source} -> {to} from {}: {outcome} (timeout {} ms; times since the lab was created)",
        request.protocol,
        request.from,
        request.timeout.as_millis()
    );
    let sent: Vec<String> = trace.sent.iter().map(|&t| at(t)).collect();
    let _ = writeln!(
        s,
        "  started {}, sent {}, reply {}, ended {}{}",
        trace.started.map_or("-".into(), at),
        if sent.is_empty() {
            "-".to_string()
        } else {
            sent.join(" and ")
        },
        trace.reply.map_or("none".into(), at),
        trace.finished.map_or("-".into(), at),
        if trace.stray_replies > 0 {
            format!(
                "; {} stray replies (not answering this probe) ignored",
                trace.stray_replies
            )
        } else {
            String::new()
        }
    );
    for i in 0..lab.node_count() {
        let name = &lab.node_names()[i];
        let _ = writeln!(s, "  {name} ({}): {}", lab.node_netns(i), node_state(i));
    }
    let src_ip = trace.source.map(|a| a.ip()).or_else(|| {
        let family = if request.to.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        lab.pod_ip(&request.from, family)
    });
    if let Some(src_ip) = src_ip {
        for i in 0..lab.node_count() {
            let name = &lab.node_names()[i];
            match conntrack_entries(lab, i, src_ip, request.to) {
                Ok(lines) if lines.is_empty() => {
                    let _ = writeln!(
                        s,
                        "  conntrack on {name} between {src_ip} and {}: none",
                        request.to
                    );
                }
                Ok(lines) => {
                    let _ = writeln!(
                        s,
                        "  conntrack on {name} between {src_ip} and {} (timeout left in s; delta-time = age in s):",
                        request.to
                    );
                    // This probe's own 5-tuple first, then a few others.
                    let mine = trace
                        .source
                        .map(|a| format!("sport={} dport={} ", a.port(), request.port));
                    let (own, others): (Vec<String>, Vec<String>) =
                        lines.into_iter().partition(|l| {
                            mine.as_ref().is_some_and(|m| {
                                l.contains(m)
                                    && l.split_whitespace().nth(2)
                                        == Some(proto_word(request.protocol))
                            })
                        });
                    for l in &own {
                        let _ = writeln!(s, "    {l}   <- this probe's 5-tuple");
                    }
                    for l in others.iter().take(OTHER_CONNTRACK_LINES) {
                        let _ = writeln!(s, "    {l}");
                    }
                    if others.len() > OTHER_CONNTRACK_LINES {
                        let _ = writeln!(
                            s,
                            "    ... and {} more entries between these addresses",
                            others.len() - OTHER_CONNTRACK_LINES
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "  conntrack on {name}: unavailable: {e}");
                }
            }
        }
    }
    match trace.source {
        Some(src) if request.protocol != Protocol::Sctp => {
            let flow = FlowKey {
                protocol: request.protocol,
                src,
                dst: to,
            };
            let _ = writeln!(
                s,
                "  packets of this flow in each node's forward hook (before the policy chains: new / established; after them: let through):"
            );
            for (label, f) in [("request", flow), ("reply", flow.reversed())] {
                for i in 0..lab.node_count() {
                    let counted = match flow_counters(lab, i, &f) {
                        Ok(p) => format!(
                            "new {}, established {}, let through {}",
                            p.new, p.established, p.passed
                        ),
                        Err(e) => format!("unavailable: {e}"),
                    };
                    let _ = writeln!(
                        s,
                        "    {label:7} {} -> {} on {}: {counted}",
                        f.src,
                        f.dst,
                        lab.node_names()[i]
                    );
                }
            }
        }
        _ => {
            let _ = writeln!(s, "  packets of this flow: unknown (no source port)");
        }
    }
    if rulesets {
        for i in 0..lab.node_count() {
            let name = &lab.node_names()[i];
            match ruleset(lab, i) {
                Ok(text) if text.trim().is_empty() => {
                    let _ = writeln!(s, "  ruleset in force on {name}: none");
                }
                Ok(text) => {
                    let _ = writeln!(s, "  ruleset in force on {name}:");
                    for l in text.lines() {
                        let _ = writeln!(s, "    {l}");
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "  ruleset on {name}: unavailable: {e}");
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counters_are_read_from_the_listing() {
        let text = "table inet palisade_lab_observe {\n\tset est_v6 {\n\t\t\
                    elements = { fd50:a15a:de:1::4 . fd50:a15a:de:1::5 . udp . 41234 . 80 \
                    counter packets 2 bytes 134 expires 4m58s }\n\t}\n}\n";
        assert_eq!(packets_in_listing(text), 2);
        assert_eq!(packets_in_listing("table inet x {\n}\n"), 0);
    }

    #[test]
    fn conntrack_lines_are_picked_by_address_pair_and_shortened() {
        let text = "ipv6     10 udp      17 27 src=fd50:a15a:00de:0001:0000:0000:0000:0004 dst=fd50:a15a:00de:0001:0000:0000:0000:0005 sport=41234 dport=80 packets=2 bytes=94 src=fd50:a15a:00de:0001:0000:0000:0000:0005 dst=fd50:a15a:00de:0001:0000:0000:0000:0004 sport=80 dport=41234 packets=2 bytes=94 [ASSURED] mark=0 delta-time=3 use=1\n\
                    ipv6     10 udp      17 27 src=fd50:a15a:00de:0001:0000:0000:0000:0004 dst=fd50:a15a:00de:0001:0000:0000:0000:0006 sport=1 dport=80 src=fd50:a15a:00de:0001:0000:0000:0000:0006 dst=fd50:a15a:00de:0001:0000:0000:0000:0004 sport=80 dport=1 mark=0 use=1\n";
        let got = filter_conntrack(
            text,
            "fd50:a15a:de:1::5".parse().unwrap(),
            "fd50:a15a:de:1::4".parse().unwrap(),
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("src=fd50:a15a:de:1::4 dst=fd50:a15a:de:1::5 sport=41234"));
        assert!(got[0].contains("[ASSURED]"));
    }

    #[test]
    fn the_observer_table_is_left_out_of_rulesets() {
        let text = "table inet palisade {\n\tchain forward {\n\t}\n}\n\
                    table inet palisade_lab_observe {\n\tset new_v4 {\n\t}\n}\n";
        assert_eq!(
            strip_observer(text),
            "table inet palisade {\n\tchain forward {\n\t}\n}\n"
        );
    }
}
