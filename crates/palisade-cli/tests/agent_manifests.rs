//! The agent with its manifests-folder source, enforcing in a lab node: the same engine
//! path as the Kubernetes source, checked with real packets. Root only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_lab::{Lab, LabPod, LabSpec, ProbeOutcome, can_run_root_tests};
use palisade_model::{IpFamily, Key, Protocol};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET on loopback; (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        text.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string(),
    ))
}

/// Polls `check` every 50 ms for at most 15 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

fn pod_yaml(lab: &Lab, key: &Key, app: &str) -> String {
    let node = &lab.node_names()[lab.pod_node(key).unwrap()];
    let ips: Vec<String> = lab
        .pod_ips(key)
        .iter()
        .map(|ip| format!("{{ip: \"{ip}\"}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n  containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 80}}]}}]\n\
         status: {{phase: Running, podIPs: [{}]}}\n---\n",
        key.name,
        key.namespace,
        ips.join(", ")
    )
}

const DENY_WEB: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: web-from-frontend, namespace: demo}\n\
spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}}}]\n";

#[test]
fn agent_enforces_a_manifests_folder_and_follows_its_changes() {
    if !can_run_root_tests(true) {
        return;
    }
    let web: Key = "demo/web".parse().unwrap();
    let client: Key = "demo/client".parse().unwrap();
    let spec = LabSpec {
        pods: vec![
            LabPod::new(web.clone())
                .on_node(0)
                .with_ports([(80, Protocol::Tcp)]),
            LabPod::new(client.clone())
                .on_node(1)
                .with_ports([(80, Protocol::Tcp)]),
        ],
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).unwrap();
    lab.serve(&web, &[(80, Protocol::Tcp)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "cluster.yaml",
        &format!(
            "{}{}",
            pod_yaml(&lab, &web, "web"),
            pod_yaml(&lab, &client, "client")
        ),
    );
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node0 = lab.node_netns(0).to_string();
    let start_agent = |dir: &Path| {
        Agent(
            Command::new(env!("CARGO_BIN_EXE_palisade"))
                .args([
                    "agent",
                    "--node",
                    "node-0",
                    "--netns",
                    &node0,
                    "--poll-ms",
                    "50",
                    "--counters-interval-ms",
                    "200",
                ])
                .arg("--manifests")
                .arg(dir)
                .args(["--listen", &addr.to_string(), "--table", "palisade"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut agent = start_agent(dir.path());
    eventually("agent ready", || {
        http_get(addr, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let to_web = lab.pod_ip(&web, IpFamily::V4).unwrap();
    let probe = || {
        lab.probe(
            &client,
            to_web,
            80,
            Protocol::Tcp,
            Duration::from_millis(500),
        )
    };
    assert_eq!(probe(), ProbeOutcome::Connected, "no policy yet");

    write("policy.yaml", DENY_WEB);
    eventually("policy enforced", || probe() == ProbeOutcome::TimedOut);

    // The client gets the allowed label: one pod update, one set element.
    write(
        "cluster.yaml",
        &format!(
            "{}{}",
            pod_yaml(&lab, &web, "web"),
            pod_yaml(&lab, &client, "frontend")
        ),
    );
    eventually("relabelled client allowed", || {
        probe() == ProbeOutcome::Connected
    });
    // The kernel's counters, per policy rule and per endpoint's default deny, reach /metrics.
    let counter = |metrics: &str, series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    eventually("per-rule and default-deny counters in /metrics", || {
        http_get(addr, "/metrics").is_some_and(|(_, m)| {
            counter(&m, "palisade_rule_allowed_packets{namespace=\"demo\",policy=\"web-from-frontend\",direction=\"ingress\",rule=\"0\"}") >= 1.0
                && counter(&m, "palisade_default_deny_dropped_packets{endpoint=\"demo/web\",direction=\"ingress\"}") >= 1.0
        })
    });

    // `top` sees the allowing rule busy while allowed connections are made...
    let agent_url = format!("http://{addr}");
    let top = std::thread::scope(|s| {
        let top = s.spawn(|| {
            Command::new(env!("CARGO_BIN_EXE_palisade"))
                .args(["top", "--agent", &agent_url, "--interval", "2"])
                .output()
                .unwrap()
        });
        for _ in 0..3 {
            assert_eq!(probe(), ProbeOutcome::Connected);
        }
        top.join().unwrap()
    });
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    assert!(
        top.lines()
            .any(|l| l.starts_with("demo/web-from-frontend ingress[0]") && !l.contains(" 0 ")),
        "{top}"
    );
    // ...and `lint --live` reports it as unused over a period without traffic.
    let lint = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lint", "--live", "--agent", &agent_url, "--period", "1"])
        .output()
        .unwrap();
    let lint_out = String::from_utf8_lossy(&lint.stdout).to_string();
    assert_eq!(lint.status.code(), Some(1), "{lint_out}");
    assert!(
        lint_out.contains("NetworkPolicy demo/web-from-frontend: spec.ingress[0]"),
        "{lint_out}"
    );

    // An invalid folder is not applied at all: the last valid rules stay.
    write(
        "broken.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad}\n",
    );
    eventually("invalid input counted", || {
        http_get(addr, "/metrics")
            .is_some_and(|(_, m)| m.contains("palisade_invalid_objects_total 1"))
    });
    assert_eq!(probe(), ProbeOutcome::Connected);
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();

    // SIGTERM leaves the rules in place.
    write(
        "cluster.yaml",
        &format!(
            "{}{}",
            pod_yaml(&lab, &web, "web"),
            pod_yaml(&lab, &client, "client")
        ),
    );
    eventually("client denied again", || probe() == ProbeOutcome::TimedOut);
    // `palisade events` follows the agent: the next denied probe is one line naming why.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "events",
            "--agent",
            &agent_url,
            "--verdict",
            "denied",
            "--pod",
            "web",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(probe(), ProbeOutcome::TimedOut);
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = follower.kill();
    let _ = follower.wait();
    let line = line.expect("an event line within 10 s");
    assert!(
        line.contains("DENIED")
            && line.contains("-> demo/web 80/TCP (ingress)")
            && line.contains("isolated for ingress by demo/web-from-frontend"),
        "{line}"
    );
    let pid = agent.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        agent.0.try_wait().unwrap().is_some_and(|s| s.success()),
        "agent exits cleanly on SIGTERM"
    );
    assert_eq!(
        probe(),
        ProbeOutcome::TimedOut,
        "rules stay after the agent stops"
    );
    let listed = lab
        .run_in_node(0, &["nft", "list", "table", "inet", "palisade"], None)
        .unwrap();
    assert!(listed.status.success());

    // A restarted agent replaces the table atomically and keeps enforcing.
    agent = start_agent(dir.path());
    eventually("restarted agent ready", || {
        http_get(addr, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert_eq!(probe(), ProbeOutcome::TimedOut);
    drop(agent);
}
