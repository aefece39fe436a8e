//! # palisade-agent
//!
//! The node agent: [`source`]s (Kubernetes watches through kube-rs, or a manifests folder)
//! feed one [`controller::Controller`] that keeps the engine's [`ClusterState`] current,
//! compiles the IR for its node and hands it to one [`Dataplane`], batching changes that
//! arrive together. [`http`] serves `/healthz`, `/readyz` and `/metrics`.
//!
//! Must not: decide semantics (the engine does), know any concrete backend (the binary
//! picks one and passes a `Box<dyn Dataplane>`), or remove enforcement when the API is
//! unreachable or the agent stops (rules stay as last applied unless asked otherwise).
//!
//! Start at [`run`], then [`controller`].
//!
//! [`ClusterState`]: palisade_engine::ClusterState
//! [`Dataplane`]: palisade_ir::Dataplane

pub mod controller;
pub mod events;
pub mod http;
pub mod metrics;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_ir::Dataplane;

use crate::controller::{BatchConfig, Controller, Health};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("http server on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("controller stopped unexpectedly: {0}")]
    Controller(String),
    #[error("dataplane: {0}")]
    Dataplane(#[from] palisade_ir::DataplaneError),
}

/// Where the agent learns the cluster from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// The Kubernetes API: in-cluster config, or this kubeconfig file.
    Kubernetes { kubeconfig: Option<PathBuf> },
    /// A folder of manifests, re-read when it changes.
    Manifests { dir: PathBuf, poll: Duration },
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub source: SourceConfig,
    pub batch: BatchConfig,
    /// Address for /healthz, /readyz and /metrics; None = no HTTP server.
    pub listen: Option<SocketAddr>,
    /// Remove the rules on SIGTERM/SIGINT instead of leaving them in place.
    pub cleanup_on_exit: bool,
    /// Backoff cap for watch retries.
    pub max_backoff: Duration,
    /// How often the dataplane's counters are read into /metrics.
    pub counters_every: Duration,
    /// How often a full apply repairs drift (someone editing or flushing the rules).
    pub resync_every: Option<Duration>,
    /// Read the dataplane's verdict events (it must have been built with them on).
    pub events: bool,
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(config: AgentConfig, mut dataplane: Box<dyn Dataplane>) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    // Opened before the first apply, so no report of the first rules is missed. Without
    // it the agent still enforces (the kernel drops reports nobody reads): events are an
    // explanation, not a decision.
    let event_source = if config.events {
        match dataplane.events() {
            Ok(source) => Some(source),
            Err(e) => {
                tracing::error!(error = %e, "verdict events unavailable; enforcing without them");
                None
            }
        }
    } else {
        None
    };
    let hub = event_source
        .as_ref()
        .map(|_| events::EventHub::new(config.node.clone()));
    let (tx, rx) = std::sync::mpsc::channel();

    let mut tasks = Vec::new();
    match &config.source {
        SourceConfig::Kubernetes { kubeconfig } => {
            let client = source::kube_client(kubeconfig.as_deref()).await?;
            tasks.extend(source::spawn_kube_watchers(
                client,
                tx.clone(),
                metrics.clone(),
                health.clone(),
                config.max_backoff,
            ));
        }
        SourceConfig::Manifests { dir, poll } => {
            tasks.push(source::spawn_manifests_watcher(
                dir.clone(),
                *poll,
                tx.clone(),
                metrics.clone(),
                health.clone(),
            ));
        }
    }
    drop(tx);

    if let Some(addr) = config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Http { addr, source })?;
        tracing::info!(%addr, "serving /healthz /readyz /metrics /events");
        tasks.push(tokio::spawn(http::serve(
            listener,
            metrics.clone(),
            health.clone(),
            hub.clone(),
        )));
    }

    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let controller = Controller::new(
        config.node.clone(),
        dataplane,
        palisade_ir::ReconcilerConfig {
            resync_every: config.resync_every,
        },
        metrics.clone(),
        health.clone(),
    );
    let mut controller = controller.with_counters_every(config.counters_every);
    let (events_stop_tx, events_stop_rx) = std::sync::mpsc::channel::<()>();
    let mut event_thread = None;
    if let (Some(source), Some(hub)) = (event_source, &hub) {
        controller = controller.with_event_hub(hub.clone());
        let (hub, metrics) = (hub.clone(), metrics.clone());
        event_thread = Some(
            std::thread::Builder::new()
                .name("palisade-events".into())
                .spawn(move || events::read_events(source, hub, metrics, events_stop_rx))
                .map_err(|e| AgentError::Controller(e.to_string()))?,
        );
    }
    let batch = config.batch;
    let cleanup = config.cleanup_on_exit;
    let controller_thread = std::thread::Builder::new()
        .name("palisade-controller".into())
        .spawn(move || controller.run(rx, stop_rx, batch, cleanup))
        .map_err(|e| AgentError::Controller(e.to_string()))?;

    shutdown_signal().await;
    tracing::info!(cleanup_on_exit = cleanup, "stopping");
    for t in &tasks {
        t.abort();
    }
    let _ = stop_tx.send(());
    let _ = events_stop_tx.send(());
    if let Some(t) = event_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let result = tokio::task::spawn_blocking(move || controller_thread.join())
        .await
        .map_err(|e| AgentError::Controller(e.to_string()))?
        .map_err(|_| AgentError::Controller("controller thread panicked".into()))?;
    result.map_err(AgentError::Dataplane)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
