//! The harness's own parts, on loopback only: the proxy's cut and restore, metrics parsing,
//! and (when kube-apiserver and etcd are available) the control plane's start, restart and
//! etcd compaction (no root needed); and, as root, the mismatch report of a wrong cell.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::ListParams;
use palisade_kubetest::{ControlPlane, Metrics, TcpProxy, k8s_binaries};

/// An echo server on 127.0.0.1 serving every connection on its own thread until EOF.
fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = [0u8; 256];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn roundtrip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(text)?;
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, text);
    Ok(())
}

#[test]
fn proxy_cuts_live_connections_refuses_new_ones_and_restores() {
    let proxy = TcpProxy::start(echo_server()).expect("proxy");
    let mut live = TcpStream::connect(proxy.addr()).expect("connect");
    roundtrip(&mut live, b"before").expect("through the proxy");

    proxy.cut().expect("cut");
    assert_eq!(proxy.live_connections(), 0);
    assert!(
        roundtrip(&mut live, b"during").is_err(),
        "a live connection must die on cut"
    );
    // A new one is accepted and reset at once.
    let mut fresh = TcpStream::connect(proxy.addr()).expect("the listener stays bound");
    assert!(
        roundtrip(&mut fresh, b"during").is_err(),
        "a new connection must fail while cut"
    );
    assert!(proxy.refused() >= 1);

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr()).expect("connect");
    roundtrip(&mut again, b"after").expect("through the proxy again");
    assert_eq!(proxy.accepted(), 2);
}

#[test]
fn metrics_lookups() {
    let m = Metrics(
        "# HELP x\npalisade_applies_total 7\n\
         palisade_watch_restarts_total{kind=\"Pod\"} 3\n\
         palisade_watch_restarts_total{kind=\"Namespace\"} 1\n\
         palisade_event_to_applied_seconds_sum 0.5\n\
         palisade_event_to_applied_seconds_count 10\n\
         # EOF\n"
            .into(),
    );
    assert_eq!(m.applies(), 7);
    assert_eq!(m.watch_restarts("Pod"), 3);
    assert_eq!(m.watch_restarts("NetworkPolicy"), 0);
    assert_eq!(m.events_applied(), 10);
    assert_eq!(m.mean_event_to_applied(), Some(Duration::from_millis(50)));
}

/// Needs the kube-apiserver and etcd binaries (see `palisade_kubetest::k8s_binaries`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_starts_restarts_and_compacts() {
    if let Err(e) = k8s_binaries() {
        assert_ne!(
            std::env::var("PALISADE_REQUIRE_ROOT_TESTS").as_deref(),
            Ok("1"),
            "{e}"
        );
        palisade_kubetest::report(format!("SKIPPED: {e}"));
        return;
    }
    let mut cp = ControlPlane::start().await.expect("control plane");
    let namespaces = |client: kube::Client| async move {
        let api: Api<Namespace> = Api::all(client);
        api.list(&ListParams::default())
            .await
            .map(|l| l.items.len())
    };
    assert!(namespaces(cp.admin_client().await.unwrap()).await.unwrap() >= 1);
    // The agent's identity from deploy/ can list what it watches, and nothing more.
    let agent = palisade_kubetest::control_plane::client_from_kubeconfig(
        &cp.agent_kubeconfig().await.unwrap(),
    )
    .await
    .unwrap();
    assert!(namespaces(agent.clone()).await.is_ok());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::all(agent);
    assert!(
        secrets.list(&ListParams::default()).await.is_err(),
        "deploy/ must not grant secrets"
    );

    let before = cp.etcd_revision().unwrap();
    cp.stop_apiserver().unwrap();
    cp.start_apiserver().await.unwrap();
    assert!(
        namespaces(cp.admin_client().await.unwrap()).await.unwrap() >= 1,
        "same etcd data after a restart"
    );
    let compacted = cp.compact_etcd().unwrap();
    assert!(compacted >= before);
}

/// A cell still wrong at the deadline gets a mismatch report: probed once more and
/// explained with what the caller says of each node, conntrack and the flow's packets.
/// (Root: a two-node lab with no policy, where a connection expected denied connects.)
#[test]
fn a_wrong_cell_is_explained() {
    use palisade_kubetest::{Expectation, probe_rounds};
    use palisade_lab::{Lab, LabPod, LabSpec, can_run_root_tests};
    use palisade_model::{IpFamily, Protocol};
    if !can_run_root_tests(true) {
        return;
    }
    let (a, b) = ("x/a".parse().unwrap(), "x/b".parse().unwrap());
    let lab = Lab::create(LabSpec {
        pods: vec![
            LabPod::new(a).on_node(0),
            LabPod::new(b).on_node(1).with_ports([(80, Protocol::Tcp)]),
        ],
        ..LabSpec::default()
    })
    .expect("lab");
    palisade_lab::diagnose::install_flow_counters(&lab).expect("observer");
    let to = lab.pod_ip(&"x/b".parse().unwrap(), IpFamily::V4).unwrap();
    let expected = vec![Expectation::tcp(&"x/a".parse().unwrap(), to, 80, false)];
    let probe = Duration::from_millis(500);
    let rounds = probe_rounds(&lab, &expected, probe, Duration::from_millis(300)).expect("probes");
    assert_eq!(rounds.wrong, vec![0], "nothing denies it");
    let state = |i: usize| format!("state of node {i} as the caller sees it");
    let reports = rounds.explain_wrong(&lab, &expected, probe, &state, 5);
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    eprintln!("{report}");
    for needle in [
        "still wrong when probed again",
        "state of node 0 as the caller sees it",
        "state of node 1 as the caller sees it",
        "conntrack on",
        "<- this probe's 5-tuple",
        "packets of this flow",
    ] {
        assert!(report.contains(needle), "no {needle:?} in:\n{report}");
    }
}
