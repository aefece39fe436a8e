//! Verdict events benchmark (issue 14), with real packets in the lab (root only). Results
//! and the command that produced them: BENCHMARKS.md, "Verdict events".
//!
//! ```text
//! cargo run --release -p palisade-lab --example events_bench -- [--backend nft|iptables-nft|iptables-legacy|ebpf] [--rounds 10] [--window-ms 1000] [--latency-probes 100]
//! ```
//!
//! Two lab nodes carry the backend's rules (nftables by default). `bench/client` (node 0) connects in a loop to
//! `bench/server` (node 1) on 8080/TCP, which a policy allows; meanwhile `bench/flooder`
//! (node 0) floods the server with UDP datagrams, each to another port, all denied by the
//! server's default deny: every one is a new connection the dataplane drops, and with
//! events on, logs (rate-limited per endpoint) to NFLOG, where a reader thread in this
//! process reads them as the agent does.
//!
//! 1. Cost to allowed traffic: windows alternate between the table rendered with events
//!    on (and the reader running) and without events (same flood, same table otherwise);
//!    measured is the CPU time of the client's connect thread per connection (its
//!    softirq work includes both nodes' netfilter path; see dataplane_bench). Reported:
//!    without/with ratio of CPU per connection (>= 0.95: events cost allowed traffic at
//!    most 5%), and the flood's rate.
//! 2. Delivery: denied datagrams one at a time, under the rate limit, each timed from its
//!    send to the reader receiving its report (packet -> agent). p50, p99.
//!
//! Traffic only flows between the lab's own namespaces; loops are bounded in time and
//! count; the lab's namespaces are deleted when it drops (also on a panic) and on SIGINT.

#[path = "common/backends.rs"]
mod backends;

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backends::BenchBackend;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{setsockopt, sockopt};
use nix::time::{ClockId, clock_gettime};
use palisade_engine::ClusterState;
use palisade_ir::events::EventConfig;
use palisade_lab::{Lab, LabPod, LabSpec};
use palisade_model::load::{Loaded, load_str};
use palisade_model::{IpFamily, Key, Object, Protocol};

const CONN_PORT: u16 = 8080;
const POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080, protocol: TCP}]
";

struct Args {
    backend: BenchBackend,
    rounds: usize,
    window: Duration,
    latency_probes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        backend: BenchBackend::Nft,
        rounds: 10,
        window: Duration::from_millis(1000),
        latency_probes: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => {
                args.backend =
                    BenchBackend::parse(&value()?).map_err(|e| format!("--backend: {e}"))?
            }
            "--rounds" => args.rounds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--window-ms" => {
                args.window = Duration::from_millis(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--latency-probes" => {
                args.latency_probes = value()?.parse().map_err(|e| format!("{e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn key(s: &str) -> Key {
    s.parse().expect("key")
}

/// Runs `f` on a thread inside `netns`.
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| "thread panicked".to_string())?
    })
}

/// Connections made and the connect thread's CPU time over `window`.
fn connect_loop(netns: &str, to: SocketAddr, window: Duration) -> Result<(u64, Duration), String> {
    in_netns(netns, || {
        let reset = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let cpu = || clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from);
        let cpu0 = cpu().map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut ok = 0;
        while start.elapsed() < window {
            if let Ok(s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                let _ = setsockopt(&s, sockopt::Linger, &reset);
                ok += 1;
            }
        }
        Ok((ok, cpu().map_err(|e| e.to_string())?.saturating_sub(cpu0)))
    })?
}

/// Sends denied datagrams from `netns` to `to`, each to the next port (a new flow each),
/// until `stop`; counts them.
fn flood(netns: &str, to: IpAddr, stop: &AtomicBool, sent: &AtomicU64) -> Result<(), String> {
    in_netns(netns, || {
        let socket = UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0)).map_err(|e| e.to_string())?;
        let mut port: u16 = 20000;
        let deadline = Instant::now() + Duration::from_secs(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            port = if port >= 60000 { 20000 } else { port + 1 };
            if socket.send_to(b"flood", (to, port)).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    })?
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("events_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    palisade_lab::check_prerequisites().map_err(|e| e.to_string())?;
    palisade_lab::install_signal_cleanup().map_err(|e| e.to_string())?;
    let lab = Lab::create(LabSpec {
        pods: vec![
            LabPod::new(key("bench/client")).on_node(0),
            LabPod::new(key("bench/server"))
                .on_node(1)
                .with_ports([(CONN_PORT, Protocol::Tcp)]),
            LabPod::new(key("bench/flooder")).on_node(0),
        ],
        ..LabSpec::default()
    })
    .map_err(|e| e.to_string())?;
    let mut objects: Vec<Object> = lab.engine_pods().into_iter().map(Object::Pod).collect();
    let mut loaded = Loaded::default();
    load_str(POLICY, "events_bench", &mut loaded);
    objects.extend(loaded.objects.into_iter().map(|(_, o)| o));
    let state = ClusterState::from_objects(&objects);
    let rulesets: Vec<_> = lab
        .node_names()
        .iter()
        .map(|n| state.compile_node(n))
        .collect();
    let events = EventConfig::default();
    let dataplane =
        |node: usize, events: Option<EventConfig>| args.backend.make(lab.node_netns(node), events);
    println!("Backend: {}", args.backend.name());
    let mut plain: Vec<_> = (0..2).map(|i| dataplane(i, None)).collect();
    let mut logging: Vec<_> = (0..2).map(|i| dataplane(i, Some(events))).collect();
    let reader = logging[1].events().map_err(|e| e.to_string())?;

    let server = lab
        .pod_ip(&key("bench/server"), IpFamily::V4)
        .ok_or("no server address")?;
    let client_ns = lab
        .pod_netns(&key("bench/client"))
        .ok_or("no client")?
        .to_string();
    let flooder_ns = lab
        .pod_netns(&key("bench/flooder"))
        .ok_or("no flooder")?
        .to_string();
    let to = SocketAddr::new(server, CONN_PORT);

    // 1. Allowed connections beside a flood of denied ones, events on and off.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let reported = Arc::new(AtomicU64::new(0));
    let ((per_conn_on, per_conn_off, flood_rate, events_rate), mut reader) =
        std::thread::scope(|s| {
            let flooder = s.spawn(|| flood(&flooder_ns, server, &stop, &sent));
            let (stop_reading, reported_by_reader) = (stop.clone(), reported.clone());
            let reading = s.spawn(move || {
                let mut reader = reader;
                while !stop_reading.load(Ordering::Relaxed) {
                    if let Ok(batch) = reader.recv(Duration::from_millis(100)) {
                        reported_by_reader.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                }
                reader
            });
            let mut on = (0u64, Duration::ZERO);
            let mut off = (0u64, Duration::ZERO);
            let started = Instant::now();
            let sent0 = sent.load(Ordering::Relaxed);
            let mut result = Ok(());
            for round in 0..args.rounds * 2 {
                // Alternating order, so drift in the machine's load hits both alike.
                let with_events = (round % 2 == 0) == (round / 2 % 2 == 0);
                let applied = if with_events {
                    logging
                        .iter_mut()
                        .zip(&rulesets)
                        .try_for_each(|(d, rs)| d.apply_full(rs).map(drop))
                } else {
                    plain
                        .iter_mut()
                        .zip(&rulesets)
                        .try_for_each(|(d, rs)| d.apply_full(rs).map(drop))
                };
                if let Err(e) = applied {
                    result = Err(e.to_string());
                    break;
                }
                match connect_loop(&client_ns, to, args.window) {
                    Ok((n, cpu)) => {
                        let slot = if with_events { &mut on } else { &mut off };
                        slot.0 += n;
                        slot.1 += cpu;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let flood_rate = (sent.load(Ordering::Relaxed) - sent0) as f64 / secs;
            stop.store(true, Ordering::Relaxed);
            let _ = flooder.join();
            let reader = reading.join().map_err(|_| "reader panicked".to_string())?;
            result?;
            let per_conn = |(n, cpu): (u64, Duration)| cpu.as_secs_f64() / n.max(1) as f64;
            let events_rate = reported.load(Ordering::Relaxed) as f64 / secs;
            Ok::<_, String>((
                (per_conn(on), per_conn(off), flood_rate, events_rate),
                reader,
            ))
        })?;
    println!(
        "Allowed TCP connections beside a flood of denied UDP ({flood_rate:.0} datagrams/s, all dropped):"
    );
    println!(
        "  CPU per connection: events off {:.1} us, events on {:.1} us; ratio (off/on) {:.3}",
        per_conn_off * 1e6,
        per_conn_on * 1e6,
        per_conn_off / per_conn_on
    );
    println!(
        "  events read while flooding: {events_rate:.1}/s (kernel limit {}/s, burst {}, per endpoint and direction)",
        events.rate_per_second, events.burst
    );

    // 2. Delivery latency: one denied datagram at a time, under the rate limit.
    for (d, rs) in logging.iter_mut().zip(&rulesets) {
        d.apply_full(rs).map_err(|e| e.to_string())?;
    }
    let _ = reader.recv(Duration::from_millis(200));
    let gap = Duration::from_secs_f64(1.0 / f64::from(events.rate_per_second.max(1)) * 1.2);
    let mut latencies = Vec::new();
    let mut missing = 0;
    for i in 0..args.latency_probes {
        let port = 30000 + i as u16;
        let sent_at = in_netns(&flooder_ns, || {
            let socket = UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0)).ok()?;
            let t = Instant::now();
            socket.send_to(b"probe", (server, port)).ok()?;
            Some(t)
        })?
        .ok_or("send failed")?;
        let deadline = sent_at + Duration::from_secs(1);
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            for e in reader
                .recv(Duration::from_millis(50))
                .map_err(|e| e.to_string())?
            {
                if e.packet.dst_port == Some(port) {
                    got = Some(e.received.saturating_duration_since(sent_at));
                }
            }
        }
        match got {
            Some(l) => latencies.push(l),
            None => missing += 1,
        }
        std::thread::sleep(gap.saturating_sub(sent_at.elapsed()));
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "Event delivery, packet sent -> report read ({} probes, {missing} without a report): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
