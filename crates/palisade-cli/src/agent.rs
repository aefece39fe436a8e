//! `palisade agent`: the node agent with its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use palisade_agent::controller::BatchConfig;
use palisade_agent::{AgentConfig, SourceConfig};
use palisade_ir::events::EventConfig;

use crate::dataplane::{Backend, make_dataplane};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name: pods with this spec.nodeName are enforced here.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Kubeconfig file (default: in-cluster config, then $KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch this folder of manifests instead of the Kubernetes API.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// How often the manifests folder is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    #[arg(long, value_enum, default_value_t = Backend::Nft)]
    pub backend: Backend,
    /// Apply the rules inside this network namespace (`ip netns` name) instead of the
    /// agent's own; the lab runs one agent per lab node this way.
    #[arg(long)]
    pub netns: Option<String>,
    /// Name of the nft table the agent owns.
    #[arg(long, default_value = "palisade")]
    pub table: String,
    /// Serve /healthz, /readyz and /metrics here.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Apply a batch once no event arrived for this long (milliseconds)...
    #[arg(long, default_value_t = 5)]
    pub batch_quiet_ms: u64,
    /// ...or at the latest this long after its first event (milliseconds).
    #[arg(long, default_value_t = 50)]
    pub batch_max_ms: u64,
    /// Upper bound of the retry backoff when the API server is unreachable (milliseconds).
    #[arg(long, default_value_t = 5000)]
    pub max_backoff_ms: u64,
    /// Read the dataplane's per-rule counters into /metrics this often (milliseconds).
    #[arg(long, default_value_t = 10_000)]
    pub counters_interval_ms: u64,
    /// Re-apply the whole ruleset this often (seconds), undoing any edit or flush of
    /// Palisade's own rules by someone else; 0 disables it.
    #[arg(long, default_value_t = 300)]
    pub resync_interval_s: u64,
    /// Remove the rules when stopping. Default: leave them, so a node never opens up
    /// because its agent restarts.
    #[arg(long)]
    pub cleanup_on_exit: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Report verdict events (denied and audit-denied new connections) as JSON lines on
    /// stdout and on /events.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub events: bool,
    /// Also report allowed new connections.
    #[arg(long)]
    pub log_allowed: bool,
    /// Kernel rate limit of events: per second, per endpoint and direction (per rule for
    /// allowed connections)...
    #[arg(long, default_value_t = EventConfig::default().rate_per_second)]
    pub event_rate: u32,
    /// ...after a burst of this many.
    #[arg(long, default_value_t = EventConfig::default().burst)]
    pub event_burst: u32,
    /// The NFLOG group netfilter backends log into.
    #[arg(long, default_value_t = EventConfig::default().nflog_group)]
    pub nflog_group: u16,
}

impl AgentArgs {
    fn event_config(&self) -> Option<EventConfig> {
        self.events.then_some(EventConfig {
            log_allowed: self.log_allowed,
            rate_per_second: self.event_rate,
            burst: self.event_burst,
            nflog_group: self.nflog_group,
        })
    }
}

pub fn agent(args: &AgentArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: a log written to a file or collected from a
    // container must stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let source = match &args.manifests {
        Some(dir) => SourceConfig::Manifests {
            dir: dir.clone(),
            poll: Duration::from_millis(args.poll_ms),
        },
        None => SourceConfig::Kubernetes {
            kubeconfig: args.kubeconfig.clone(),
        },
    };
    let config = AgentConfig {
        node: args.node.clone(),
        source,
        batch: BatchConfig {
            quiet: Duration::from_millis(args.batch_quiet_ms),
            max_delay: Duration::from_millis(args.batch_max_ms),
        },
        listen: Some(args.listen),
        cleanup_on_exit: args.cleanup_on_exit,
        max_backoff: Duration::from_millis(args.max_backoff_ms),
        counters_every: Duration::from_millis(args.counters_interval_ms.max(100)),
        resync_every: (args.resync_interval_s > 0)
            .then(|| Duration::from_secs(args.resync_interval_s)),
        events: args.events,
    };
    let dataplane = make_dataplane(
        args.backend,
        args.netns.as_deref(),
        &args.table,
        args.event_config(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(palisade_agent::run(config, dataplane))?;
    Ok(ExitCode::SUCCESS)
}
