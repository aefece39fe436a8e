//! Writes a random conformance case file (format: testdata/conformance/README.md) to
//! stdout, for long `palisade lab conformance` runs: the upstream model (pods a, b, c in
//! namespaces x, y, z), UDP-heavy cases of 2-5 steps that apply, replace and delete random
//! policies and relabel pods, each step probing full matrices. The expectations are the
//! engine's verdicts (a recording prober over `palisade_conformance::run`), so the file
//! checks a dataplane against the engine, like the differential test.
//!
//! `cargo run -p palisade-lab --example random_cases -- SEED CASES > cases.yaml`
//! (defaults: seed 1, 90 cases). The output is JSON, which is YAML.

use std::collections::BTreeMap;

use palisade_conformance::{
    Case, CaseFile, EngineProber, Observed, Probe, Prober, RunContext, default_addresses,
};
use palisade_engine::ClusterState;
use palisade_model::IpFamily;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// Ports every pod serves in every case: UDP-heavy, one TCP for contrast.
fn served_ports() -> Value {
    json!([
        {"name": "serve-80-tcp", "port": 80, "protocol": "TCP"},
        {"name": "serve-80-udp", "port": 80, "protocol": "UDP"},
        {"name": "serve-81-udp", "port": 81, "protocol": "UDP"},
    ])
}

struct Gen {
    rng: ChaCha8Rng,
}

impl Gen {
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items.choose(&mut self.rng).expect("non-empty").clone()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pod_selector(&mut self) -> Value {
        match self.rng.random_range(0..6) {
            0 => json!({}),
            1 => json!({"matchExpressions": [{"key": "pod", "operator": "In",
                "values": [self.pick(&PODS), self.pick(&PODS)]}]}),
            2 => json!({"matchLabels": {"tier": self.pick(&["front", "back"])}}),
            _ => json!({"matchLabels": {"pod": self.pick(&PODS)}}),
        }
    }

    fn ns_selector(&mut self) -> Value {
        match self.rng.random_range(0..4) {
            0 => json!({}),
            1 => json!({"matchLabels": {"team": self.pick(&["red", "blue"])}}),
            _ => json!({"matchLabels": {"kubernetes.io/metadata.name": self.pick(&NAMESPACES)}}),
        }
    }

    fn peer(&mut self) -> Value {
        let ns = self.pick(&NAMESPACES);
        let pod = self.pick(&PODS);
        match self.rng.random_range(0..8) {
            0..=2 => json!({"podSelector": self.pod_selector()}),
            3 => json!({"namespaceSelector": self.ns_selector()}),
            4..=5 => {
                json!({"namespaceSelector": self.ns_selector(), "podSelector": self.pod_selector()})
            }
            6 => json!({"ipBlock": {"cidr": format!("{{{{podHostCIDR {ns}/{pod}}}}}")}}),
            _ => json!({"ipBlock": {"cidr": format!("{{{{largeCIDR {ns}/{pod}}}}}"),
                "except": [format!("{{{{podHostCIDR {ns}/{pod}}}}}")]}}),
        }
    }

    fn port(&mut self) -> Value {
        match self.rng.random_range(0..8) {
            0..=2 => json!({"protocol": "UDP", "port": self.pick(&[80, 81])}),
            3 => json!({"protocol": "UDP", "port": 80, "endPort": 81}),
            4 => json!({"protocol": "UDP", "port": self.pick(&["serve-80-udp", "serve-81-udp"])}),
            5 => json!({"protocol": "UDP"}),
            6 => json!({"port": 80}),
            _ => json!({"protocol": "TCP", "port": "serve-80-tcp"}),
        }
    }

    fn rule(&mut self, peers: &str) -> Value {
        let mut r = serde_json::Map::new();
        if !self.chance(0.15) {
            let n = self.rng.random_range(1..=2);
            let list: Vec<Value> = (0..n).map(|_| self.peer()).collect();
            r.insert(peers.into(), Value::Array(list));
        }
        if !self.chance(0.2) {
            let n = self.rng.random_range(1..=2);
            let list: Vec<Value> = (0..n).map(|_| self.port()).collect();
            r.insert("ports".into(), Value::Array(list));
        }
        Value::Object(r)
    }

    fn policy(&mut self, ns: &str, name: &str) -> Value {
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), self.pod_selector());
        let types = self.pick(&[
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
            vec!["Ingress", "Egress"],
        ]);
        for t in &types {
            let (field, peers) = if *t == "Ingress" {
                ("ingress", "from")
            } else {
                ("egress", "to")
            };
            let n = self.rng.random_range(0..=2);
            let rules: Vec<Value> = (0..n).map(|_| self.rule(peers)).collect();
            spec.insert(field.into(), Value::Array(rules));
        }
        spec.insert("policyTypes".into(), json!(types));
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        })
    }

    fn probes(&mut self) -> Vec<Value> {
        let mut out = vec![json!({"port": 80, "protocol": "UDP"})];
        if self.chance(0.6) {
            out.push(json!({"port": 81, "protocol": "UDP"}));
        }
        if self.chance(0.3) {
            out.push(json!({"port": 80, "protocol": "TCP"}));
        }
        out
    }

    fn case(&mut self, id: usize) -> Value {
        let mut steps = Vec::new();
        let mut live: Vec<(String, String)> = Vec::new();
        let mut next = 0;
        for _ in 0..self.rng.random_range(2..=5) {
            let mut step = serde_json::Map::new();
            let mut apply = Vec::new();
            let mut delete = Vec::new();
            match self.rng.random_range(0..6) {
                0 if !live.is_empty() => {
                    let i = self.rng.random_range(0..live.len());
                    let (ns, name) = live.remove(i);
                    delete.push(Value::String(format!("{ns}/{name}")));
                }
                1 if !live.is_empty() => {
                    let (ns, name) = self.pick(&live);
                    apply.push(self.policy(&ns, &name));
                }
                2 => {
                    let key = format!("{}/{}", self.pick(&NAMESPACES), self.pick(&PODS));
                    let mut labels = serde_json::Map::new();
                    labels.insert("pod".into(), json!(self.pick(&PODS)));
                    if self.chance(0.5) {
                        labels.insert("tier".into(), json!(self.pick(&["front", "back"])));
                    }
                    step.insert("podLabels".into(), json!({ key: labels }));
                }
                3 => {
                    let ns = self.pick(&NAMESPACES);
                    let team = self.pick(&["red", "blue"]);
                    step.insert(
                        "namespaceLabels".into(),
                        json!({ ns: {"kubernetes.io/metadata.name": ns, "team": team} }),
                    );
                }
                _ => {
                    next += 1;
                    let ns = self.pick(&NAMESPACES).to_string();
                    let name = format!("p{next}");
                    apply.push(self.policy(&ns, &name));
                    live.push((ns, name));
                }
            }
            step.insert("apply".into(), Value::Array(apply));
            step.insert("delete".into(), Value::Array(delete));
            step.insert("probe".into(), Value::Array(self.probes()));
            steps.push(Value::Object(step));
        }
        json!({
            "id": format!("random-{id}"),
            "name": "random policies, UDP-heavy",
            "servedPorts": served_ports(),
            "steps": steps,
        })
    }
}

/// Answers like the engine and keeps every matrix, in run order.
struct Recorder {
    engine: EngineProber,
    grids: Vec<Vec<Vec<Observed>>>,
}

impl Prober for Recorder {
    fn prepare(
        &mut self,
        ctx: &RunContext<'_>,
        case: &Case,
        state: &ClusterState,
    ) -> Result<(), String> {
        self.engine.prepare(ctx, case, state)
    }

    fn probe(
        &mut self,
        ctx: &RunContext<'_>,
        state: &ClusterState,
        probe: &Probe,
    ) -> Result<Vec<Vec<Observed>>, String> {
        let grid = self.engine.probe(ctx, state, probe)?;
        self.grids.push(grid.clone());
        Ok(grid)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args
        .next()
        .map_or(1, |s| s.parse().expect("SEED: a number"));
    let count: usize = args
        .next()
        .map_or(90, |s| s.parse().expect("CASES: a number"));
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
    };
    let order: Vec<String> = NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect();
    let mut pods = serde_json::Map::new();
    for k in &order {
        let pod = k.split('/').nth(1).expect("ns/pod");
        pods.insert(k.clone(), json!({"labels": {"pod": pod}}));
    }
    let mut namespaces = serde_json::Map::new();
    for ns in NAMESPACES {
        namespaces.insert(
            ns.into(),
            json!({"labels": {"kubernetes.io/metadata.name": ns}}),
        );
    }
    let all_open: Vec<String> = order.iter().map(|_| ".".repeat(order.len())).collect();
    let mut file = json!({
        "matrixPodOrder": order,
        "diagonalAsserted": false,
        "initialState": {"namespaces": namespaces, "pods": pods},
        "cases": (0..count).map(|i| g.case(i + 1)).collect::<Vec<_>>(),
    });
    // Placeholder expectations, then the engine's verdicts in their place.
    for case in file["cases"].as_array_mut().expect("cases") {
        for step in case["steps"].as_array_mut().expect("steps") {
            for probe in step["probe"].as_array_mut().expect("probes") {
                probe["expect"] = json!(all_open);
            }
        }
    }
    let text = serde_json::to_string_pretty(&file).expect("json");
    let parsed = CaseFile::parse(&text, "random").expect("the generator writes valid files");
    let addresses = default_addresses(&parsed.pods, IpFamily::V4);
    let mut recorder = Recorder {
        engine: EngineProber,
        grids: Vec::new(),
    };
    let report = palisade_conformance::run(
        &parsed,
        IpFamily::V4,
        &addresses,
        &BTreeMap::new(),
        &[],
        &mut recorder,
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut grids = recorder.grids.into_iter();
    for case in file["cases"].as_array_mut().expect("cases") {
        for step in case["steps"].as_array_mut().expect("steps") {
            for probe in step["probe"].as_array_mut().expect("probes") {
                let grid = grids.next().expect("one grid per probe");
                let rows: Vec<String> = grid
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|o| if *o == Observed::Allowed { '.' } else { 'X' })
                            .collect()
                    })
                    .collect();
                probe["expect"] = json!(rows);
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&file).expect("json"));
}
