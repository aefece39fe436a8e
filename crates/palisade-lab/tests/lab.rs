//! Real labs: network namespaces, veths, routes, packets. Root only: without root (or
//! without `ip` / `nft`) each test prints why it skips, unless
//! `PALISADE_REQUIRE_ROOT_TESTS=1`, which turns a skip into a failure (CI sets it).
//!
//! Every lab here is a local value: when an assert fails, the panic unwinds through its
//! `Drop`, which deletes its namespaces.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use palisade_lab::{
    Lab, LabPod, LabSpec, ProbeOutcome, ProbeRequest, SCTP_SKIP_REASON, list_netns,
};
use palisade_model::{IpFamily, Key, Protocol};

const TCP: (u16, Protocol) = (80, Protocol::Tcp);
const UDP: (u16, Protocol) = (81, Protocol::Udp);

fn can_run(needs_nft: bool) -> bool {
    palisade_lab::can_run_root_tests(needs_nft)
}

fn key(s: &str) -> Key {
    s.parse().unwrap()
}

fn four_pods() -> LabSpec {
    LabSpec {
        pods: ["x/a", "x/b", "y/a", "y/b"]
            .into_iter()
            .map(|k| LabPod::new(key(k)).with_ports([TCP, UDP]))
            .collect(),
        ..LabSpec::default()
    }
}

/// Every ordered pair (source, destination IP of `family`), self included when `with_self`.
fn matrix(
    lab: &Lab,
    family: IpFamily,
    (port, protocol): (u16, Protocol),
    with_self: bool,
) -> Vec<ProbeRequest> {
    let mut requests = Vec::new();
    for from in lab.pods() {
        for to in lab.pods() {
            if from == to && !with_self {
                continue;
            }
            let ip = lab.pod_ip(to, family).unwrap();
            requests.push(ProbeRequest::new(from.clone(), ip, port, protocol));
        }
    }
    requests
}

fn failures(
    requests: &[ProbeRequest],
    outcomes: &[ProbeOutcome],
    want: &ProbeOutcome,
) -> Vec<String> {
    requests
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| *o != want)
        .map(|(r, o)| format!("{} -> {}:{}/{}: {o}", r.from, r.to, r.port, r.protocol))
        .collect()
}

#[test]
fn every_pair_connects_without_policy_on_both_families() {
    if !can_run(false) {
        return;
    }
    let started = Instant::now();
    let lab = Lab::create(four_pods()).unwrap();
    eprintln!("lab {} created in {:?}", lab.prefix(), started.elapsed());

    // Placement: round-robin, each namespace spread over both nodes.
    assert_eq!(lab.node_names(), ["node-0", "node-1"]);
    for ns in ["x", "y"] {
        let nodes: Vec<usize> = ["a", "b"]
            .iter()
            .map(|p| lab.pod_node(&Key::new(ns, *p)).unwrap())
            .collect();
        assert_eq!(nodes.len(), 2);
        assert_ne!(nodes[0], nodes[1], "namespace {ns} on one node only");
    }
    for k in lab.pods() {
        assert_eq!(lab.pod_ips(k).len(), 2, "{k}: one IPv4 and one IPv6");
        assert!(lab.pod_netns(k).unwrap().starts_with(lab.prefix()));
    }

    for family in [IpFamily::V4, IpFamily::V6] {
        for served in [TCP, UDP] {
            let requests = matrix(&lab, family, served, true);
            let t = Instant::now();
            let outcomes = lab.probe_many(&requests);
            let elapsed = t.elapsed();
            eprintln!(
                "4x4 matrix {family} {}/{}: {} probes in {elapsed:?}",
                served.0,
                served.1,
                requests.len()
            );
            let bad = failures(&requests, &outcomes, &ProbeOutcome::Connected);
            assert!(
                bad.is_empty(),
                "{family} {served:?}: not connected:\n{}",
                bad.join("\n")
            );
        }
    }

    // The whole dual-stack matrix at once.
    let mut all = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for served in [TCP, UDP] {
            all.extend(matrix(&lab, family, served, true));
        }
    }
    let t = Instant::now();
    let outcomes = lab.probe_many(&all);
    eprintln!(
        "whole 4x4 x 2 families x TCP+UDP: {} probes in {:?}",
        all.len(),
        t.elapsed()
    );
    assert!(outcomes.iter().all(ProbeOutcome::is_connected));

    // Nothing listens: TCP gets a reset, UDP an ICMP port unreachable.
    let (a, b) = (key("x/a"), key("y/b"));
    for family in [IpFamily::V4, IpFamily::V6] {
        let to = lab.pod_ip(&b, family).unwrap();
        let t = Instant::now();
        assert_eq!(
            lab.probe(&a, to, 82, Protocol::Tcp, Duration::from_secs(1)),
            ProbeOutcome::Refused
        );
        assert_eq!(
            lab.probe(&a, to, 83, Protocol::Udp, Duration::from_secs(1)),
            ProbeOutcome::Refused
        );
        eprintln!("two refused probes took {:?}", t.elapsed());
        assert!(matches!(
            lab.probe(&a, to, 84, Protocol::Sctp, Duration::from_secs(1)),
            ProbeOutcome::Skipped(_)
        ));
    }

    // Traffic from the node itself (kubelet probes).
    for k in lab.pods() {
        let node = lab.pod_node(k).unwrap();
        for &ip in lab.pod_ips(k) {
            let got = lab.probe_from_node(node, ip, 80, Protocol::Tcp, Duration::from_secs(1));
            assert_eq!(got, ProbeOutcome::Connected, "node-{node} -> {k} {ip}");
        }
    }

    // Latency helper.
    let to = SocketAddr::new(lab.pod_ip(&b, IpFamily::V4).unwrap(), 80);
    let timing = lab.connect_once(&a, to, Duration::from_secs(1));
    assert_eq!(timing.outcome, ProbeOutcome::Connected);
    eprintln!("connect_once {a} -> {to}: {:?}", timing.elapsed);
}

#[test]
fn serve_changes_the_ports_of_one_pod() {
    if !can_run(false) {
        return;
    }
    let lab = Lab::create(four_pods()).unwrap();
    let (a, b) = (key("x/a"), key("x/b"));
    let summary = lab
        .serve(
            &b,
            &[
                (90, Protocol::Tcp),
                (91, Protocol::Udp),
                (92, Protocol::Sctp),
                TCP,
            ],
        )
        .unwrap();
    assert_eq!(
        summary.serving,
        vec![TCP, (90, Protocol::Tcp), (91, Protocol::Udp)]
    );
    assert_eq!(
        summary.skipped,
        vec![(92, Protocol::Sctp, SCTP_SKIP_REASON.to_string())]
    );
    let timeout = Duration::from_secs(1);
    for &ip in lab.pod_ips(&b) {
        assert_eq!(
            lab.probe(&a, ip, 90, Protocol::Tcp, timeout),
            ProbeOutcome::Connected
        );
        assert_eq!(
            lab.probe(&a, ip, 91, Protocol::Udp, timeout),
            ProbeOutcome::Connected
        );
        assert_eq!(
            lab.probe(&a, ip, 80, Protocol::Tcp, timeout),
            ProbeOutcome::Connected
        );
        assert_eq!(
            lab.probe(&a, ip, 81, Protocol::Udp, timeout),
            ProbeOutcome::Refused,
            "UDP 81 closed"
        );
    }
    // Serving the same ports again, and a port again after closing it, both work.
    lab.serve(&b, &[]).unwrap();
    assert!(lab.served_ports(&b).is_empty());
    lab.serve(&b, &[TCP, UDP]).unwrap();
    lab.serve(&b, &[TCP, UDP]).unwrap();
    for &ip in lab.pod_ips(&b) {
        assert_eq!(
            lab.probe(&a, ip, 80, Protocol::Tcp, timeout),
            ProbeOutcome::Connected
        );
        assert_eq!(
            lab.probe(&a, ip, 81, Protocol::Udp, timeout),
            ProbeOutcome::Connected
        );
        assert_eq!(
            lab.probe(&a, ip, 90, Protocol::Tcp, timeout),
            ProbeOutcome::Refused
        );
    }
    assert!(lab.serve(&key("q/q"), &[TCP]).is_err());
    assert_eq!(lab.pod_ips(&key("q/q")), &[] as &[IpAddr]);
}

#[test]
fn drop_and_panic_leave_no_namespace() {
    if !can_run(false) {
        return;
    }
    let lab = Lab::create(four_pods()).unwrap();
    let prefix = format!("{}-", lab.prefix());
    assert_eq!(list_netns(&prefix).len(), 2 + 4, "2 nodes + 4 pods");
    drop(lab);
    assert_eq!(list_netns(&prefix), Vec::<String>::new(), "after Drop");

    let lab = Lab::create(four_pods()).unwrap();
    let prefix = format!("{}-", lab.prefix());
    lab.destroy().unwrap();
    assert!(list_netns(&prefix).is_empty(), "after destroy()");

    let mut seen = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::create(four_pods()).unwrap();
        seen = format!("{}-", lab.prefix());
        assert!(!list_netns(&seen).is_empty());
        panic!("a failing assert in the middle of a test");
    }));
    assert!(result.is_err());
    assert!(!seen.is_empty());
    assert!(list_netns(&seen).is_empty(), "after a panic");
}

/// Rules installed in node 0's netns govern traffic to its pods from the same node and
/// from the other node alike.
#[test]
fn node_rules_govern_same_node_and_cross_node_paths() {
    if !can_run(true) {
        return;
    }
    let mut spec = four_pods();
    spec.pods[0].node = Some(0); // x/a: the target
    let lab = Lab::create(spec).unwrap();
    let target = key("x/a");
    assert_eq!(lab.pod_node(&target), Some(0));
    let sources: Vec<Key> = lab.pods().filter(|k| **k != target).cloned().collect();
    let same_node = sources
        .iter()
        .filter(|k| lab.pod_node(k) == Some(0))
        .count();
    assert!(
        same_node >= 1 && same_node < sources.len(),
        "sources on both nodes"
    );

    let v4 = lab.pod_ip(&target, IpFamily::V4).unwrap();
    let v6 = lab.pod_ip(&target, IpFamily::V6).unwrap();
    let rules = format!(
        "table inet palisade_lab_test {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tip daddr {v4} drop\n\
         \t\tip6 daddr {v6} drop\n\
         \t}}\n\
         }}\n"
    );
    let out = lab
        .run_in_node(0, &["nft", "-f", "-"], Some(rules.as_bytes()))
        .unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = lab
        .run_in_node(0, &["nft", "list", "tables"], None)
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("palisade_lab_test"));

    let mut to_target = Vec::new();
    let mut others = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for served in [TCP, UDP] {
            for r in matrix(&lab, family, served, false) {
                let to_t = lab.pod_ips(&target).contains(&r.to);
                if to_t {
                    to_target.push(r)
                } else {
                    others.push(r)
                }
            }
        }
    }
    let t = Instant::now();
    let denied = lab.probe_many(&to_target);
    let allowed = lab.probe_many(&others);
    eprintln!(
        "{} denied + {} allowed probes in {:?}",
        to_target.len(),
        others.len(),
        t.elapsed()
    );
    let bad = failures(&to_target, &denied, &ProbeOutcome::TimedOut);
    assert!(bad.is_empty(), "should time out:\n{}", bad.join("\n"));
    let bad = failures(&others, &allowed, &ProbeOutcome::Connected);
    assert!(bad.is_empty(), "should connect:\n{}", bad.join("\n"));
    // (`others` includes the target's own probes: their replies pass as established.)
}

/// Issue 15: a probe must be a new flow. Conntrack accepts packets of a known 5-tuple
/// before any policy (established first, DESIGN §12), so a UDP probe that reused the
/// source port of an earlier allowed probe rode its entry through a rule that now drops
/// it. Here the source pod's kernel has a single ephemeral port, so a kernel-chosen port
/// would repeat on every probe: every denied probe would connect.
#[test]
fn a_udp_probe_never_rides_the_conntrack_entry_of_an_earlier_one() {
    let Some(traces) = probes_allowed_then_dropped_from_one_ephemeral_port(UDP) else {
        return;
    };
    let mut ports = std::collections::BTreeSet::new();
    for trace in traces {
        let port = trace.source.expect("a bound socket").port();
        assert!(palisade_lab::UDP_SOURCE_PORTS.contains(&port), "{port}");
        assert!(ports.insert(port), "source port {port} used twice");
    }
}

/// The same for TCP, where the kernel's single ephemeral port *is* reused by every probe:
/// each probe must still be a new flow, and must not leave the tuple in TIME_WAIT on the
/// prober (the next connect would fail with EADDRNOTAVAIL: seen in CI as a probe that
/// "failed where the engine allows").
#[test]
fn tcp_probes_reusing_one_source_port_are_each_a_new_flow() {
    let Some(traces) = probes_allowed_then_dropped_from_one_ephemeral_port(TCP) else {
        return;
    };
    for trace in traces.iter().filter(|t| t.source.is_some()) {
        assert_eq!(trace.source.unwrap().port(), 40000, "{trace:?}");
    }
}

/// x/a (whose kernel has one ephemeral port, 40000) probes x/b on `service` three times per
/// family, one probe at a time: all connect; then, with x/b dropped on both nodes, the same
/// probes all time out. Returns every probe's trace, or `None` when the lab cannot run.
fn probes_allowed_then_dropped_from_one_ephemeral_port(
    service: (u16, Protocol),
) -> Option<Vec<palisade_lab::ProbeTrace>> {
    if !can_run(true) {
        return None;
    }
    let spec = LabSpec {
        pods: vec![
            LabPod::new(key("x/a")).on_node(0),
            LabPod::new(key("x/b")).on_node(1).with_ports([service]),
        ],
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).unwrap();
    let (a, b) = (key("x/a"), key("x/b"));
    let narrowed = lab
        .run_in_pod(
            &a,
            &[
                "sh",
                "-c",
                "echo '40000 40000' > /proc/sys/net/ipv4/ip_local_port_range",
            ],
            None,
        )
        .unwrap();
    assert!(narrowed.status.success());
    let rules = |drop_b: bool| {
        let drops = if drop_b {
            format!(
                "\t\tip daddr {} drop\n\t\tip6 daddr {} drop\n",
                lab.pod_ip(&b, IpFamily::V4).unwrap(),
                lab.pod_ip(&b, IpFamily::V6).unwrap()
            )
        } else {
            String::new()
        };
        format!(
            "table inet palisade_lab_test\ndelete table inet palisade_lab_test\n\
             table inet palisade_lab_test {{\n\tchain forward {{\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tct state established,related accept\n{drops}\t}}\n}}\n"
        )
    };
    let apply = |drop_b: bool| {
        for node in 0..2 {
            let out = lab
                .run_in_node(node, &["nft", "-f", "-"], Some(rules(drop_b).as_bytes()))
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let requests: Vec<ProbeRequest> = [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .flat_map(|f| {
            let to = lab.pod_ip(&b, f).unwrap();
            (0..3).map(move |_| {
                ProbeRequest::new(key("x/a"), to, service.0, service.1)
                    .with_timeout(Duration::from_millis(500))
            })
        })
        .collect();
    // One at a time, as a kernel-chosen port could repeat only then.
    let run = |requests: &[ProbeRequest]| -> Vec<_> {
        requests
            .iter()
            .flat_map(|r| lab.probe_many_traced(std::slice::from_ref(r)))
            .collect()
    };

    apply(false);
    let allowed = run(&requests);
    for (outcome, trace) in &allowed {
        assert_eq!(*outcome, ProbeOutcome::Connected, "{trace:?}");
    }
    // The same flows, now dropped: within conntrack's memory of the allowed ones.
    apply(true);
    let denied = run(&requests);
    for (outcome, trace) in &denied {
        assert_eq!(
            *outcome,
            ProbeOutcome::TimedOut,
            "rode an old entry: {trace:?}"
        );
    }
    Some(
        allowed
            .into_iter()
            .chain(denied)
            .map(|(_, trace)| trace)
            .collect(),
    )
}

/// The conformance shape: 9 pods, every pod-to-pod packet dropped on both nodes, so all 72
/// off-diagonal probes time out: the whole matrix must still take about one timeout.
#[test]
fn nine_by_nine_matrix_of_timeouts_takes_about_one_timeout() {
    if !can_run(true) {
        return;
    }
    let mut pods = Vec::new();
    for ns in ["x", "y", "z"] {
        for p in ["a", "b", "c"] {
            pods.push(LabPod::new(Key::new(ns, p)).with_ports([TCP]));
        }
    }
    let lab = Lab::create(LabSpec {
        pods,
        ..LabSpec::default()
    })
    .unwrap();
    let rules = "table inet palisade_lab_test {\n\
                 \tchain forward { type filter hook forward priority 0; policy drop; }\n\
                 }\n";
    for node in 0..lab.node_count() {
        let out = lab
            .run_in_node(node, &["nft", "-f", "-"], Some(rules.as_bytes()))
            .unwrap();
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let requests = matrix(&lab, family, TCP, true);
        let t = Instant::now();
        let outcomes = lab.probe_many(&requests);
        let elapsed = t.elapsed();
        eprintln!("9x9 matrix {family}, 72 of 81 probes timing out: {elapsed:?}");
        for (r, o) in requests.iter().zip(&outcomes) {
            let to_self = lab.pod_ips(&r.from).contains(&r.to);
            let want = if to_self {
                ProbeOutcome::Connected
            } else {
                ProbeOutcome::TimedOut
            };
            assert_eq!(*o, want, "{} -> {}", r.from, r.to);
        }
    }
}

#[test]
fn lab_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Lab>();
}

const SIGNAL_CHILD: &str = "PALISADE_LAB_SIGNAL_CHILD";

/// A process with a live lab that gets SIGINT deletes the lab's namespaces and exits 130.
/// The test re-runs itself as the child process.
#[test]
fn sigint_deletes_the_namespaces_of_live_labs() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    if std::env::var_os(SIGNAL_CHILD).is_some() {
        palisade_lab::install_signal_cleanup().unwrap();
        let lab = Lab::create(four_pods()).unwrap();
        println!("LAB_PREFIX={}-", lab.prefix());
        // Bounded: if no signal comes, the lab is dropped (and cleaned) all the same.
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    if !can_run(false) {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigint_deletes_the_namespaces_of_live_labs",
            "--nocapture",
        ])
        .env(SIGNAL_CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(prefix) = line.strip_prefix("LAB_PREFIX=") {
                let _ = tx.send(prefix.to_string());
            }
        }
    });
    let Ok(prefix) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child never reported its lab");
    };
    assert_eq!(list_netns(&prefix).len(), 6, "the child's lab is up");
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not exit on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "exit status 128 + SIGINT");
    assert!(
        list_netns(&prefix).is_empty(),
        "left behind: {:?}",
        list_netns(&prefix)
    );
}
