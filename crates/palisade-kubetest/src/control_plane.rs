//! [`ControlPlane`]: a real etcd and kube-apiserver on loopback, for one test.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::binaries::{K8sBinaries, k8s_binaries, repo_root};
use crate::certs::{self, Pki};
use crate::error::{Context, Error, Result};
use crate::http;
use crate::process::ChildProcess;

/// How long etcd and the API server get to become ready. A cold kube-apiserver on a loaded
/// 2-core machine takes 5-15 s (it installs every API group and bootstraps RBAC roles).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The field manager of every server-side apply the harness makes.
pub const FIELD_MANAGER: &str = "palisade-kubetest";

/// The namespace and service account of deploy/01-rbac.yaml.
pub const AGENT_NAMESPACE: &str = "palisade-system";
pub const AGENT_SERVICE_ACCOUNT: &str = "palisade-agent";

/// Agent tokens are requested for this long: longer than any test.
const TOKEN_SECONDS: i64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPlaneOptions {
    /// kube-apiserver's watch cache (`--watch-cache`), on by default as in any cluster.
    ///
    /// Off, every watch is served by etcd itself, so a watch resumed from a resource
    /// version that etcd compacted away fails with `410 Gone`. With the cache on, the API
    /// server answers such a watch from its in-memory window of recent events, which etcd
    /// compaction does not touch, and the 410 may never come: a test that means to force
    /// the 410 path of the agent's watches turns it off.
    pub watch_cache: bool,
    /// The `StrictIPCIDRValidation` feature gate (on by default since 1.36). Off, the API
    /// server stores what older servers stored: CIDRs with host bits set, IPv4 octets with
    /// leading zeros, IPv4-mapped IPv6 addresses.
    pub strict_ip_cidr_validation: bool,
    /// Store objects in etcd as JSON (`--storage-media-type=application/json`) instead of
    /// protobuf, so that a test can write an object straight into etcd
    /// ([`ControlPlane::etcd_put_json`]), as an older or buggier API server could have
    /// stored it, bypassing validation.
    pub storage_json: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            watch_cache: true,
            strict_ip_cidr_validation: true,
            storage_json: false,
        }
    }
}

/// A real etcd and kube-apiserver (RBAC on), listening on free 127.0.0.1 ports, with all
/// their files in one temporary folder. Dropping it kills both and removes the folder (set
/// `PALISADE_KUBETEST_KEEP=1` to keep the folder and its logs for a post-mortem).
///
/// Why these choices:
/// - Loopback only: the API server binds 127.0.0.1 and advertises it; etcd listens on
///   127.0.0.1 for clients and peers. Nothing leaves the machine.
/// - Admin identity by a static token (`--token-auth-file`, group `system:masters`): the
///   simplest credential kube-rs and the API server agree on; no client certificate to make.
/// - `--disable-admission-plugins=ServiceAccount`: no controller-manager runs here to create
///   each namespace's `default` service account, which that plugin would demand of every
///   pod; no kubelet would mount the token it injects either.
/// - `--endpoint-reconciler-type=none`: a single API server that must not try to publish
///   itself as the `kubernetes` service's endpoint.
/// - etcd with `--unsafe-no-fsync`: its data lives only as long as the test, and fsyncs
///   are what makes etcd slow on a busy disk. The data dir survives [`stop_apiserver`] /
///   [`start_apiserver`], which is what an API server restart needs.
///
/// [`stop_apiserver`]: ControlPlane::stop_apiserver
/// [`start_apiserver`]: ControlPlane::start_apiserver
#[derive(Debug)]
pub struct ControlPlane {
    // Drop order: the API server before etcd, both before the folder.
    apiserver: Option<ChildProcess>,
    etcd: ChildProcess,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    binaries: K8sBinaries,
    pki: Pki,
    etcd_client: SocketAddr,
    api: SocketAddr,
    options: ControlPlaneOptions,
    admin_kubeconfig: PathBuf,
    apiserver_starts: usize,
}

/// A free TCP port on 127.0.0.1 (bound once, then released for the caller to bind).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ctx("binding 127.0.0.1:0")?;
    Ok(l.local_addr().ctx("local_addr")?.port())
}

/// A loopback address with a free port.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").ctx("/dev/urandom")?,
        &mut bytes,
    )
    .ctx("/dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kubeconfig for `server`, trusting `ca`, authenticating with a bearer `token`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    token: &str,
) -> Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: {user}
current-context: kubetest
",
        ca = ca.display()
    );
    std::fs::write(path, text).ctx(format!("writing {}", path.display()))
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
    Client::try_from(config).ctx(format!("client from {}", path.display()))
}

/// The documents of a YAML file (nulls skipped).
pub fn yaml_documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).ctx(format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Server-side apply of `doc` (create or update, idempotent).
async fn apply<K>(api: Api<K>, doc: &Value) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(doc),
    )
    .await
    .ctx(format!(
        "applying {} {name}",
        doc["kind"].as_str().unwrap_or("?")
    ))
}

/// Applies one manifest of the kinds deploy/00 and deploy/01 hold.
pub async fn apply_manifest(client: &Client, doc: &Value) -> Result<()> {
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    match doc["kind"].as_str() {
        Some("Namespace") => drop(apply::<Namespace>(Api::all(client.clone()), doc).await?),
        Some("ServiceAccount") => {
            drop(apply::<ServiceAccount>(Api::namespaced(client.clone(), ns), doc).await?)
        }
        Some("ClusterRole") => drop(apply::<ClusterRole>(Api::all(client.clone()), doc).await?),
        Some("ClusterRoleBinding") => {
            drop(apply::<ClusterRoleBinding>(Api::all(client.clone()), doc).await?)
        }
        other => {
            return Err(Error::other(format!(
                "apply_manifest: unsupported kind {other:?}"
            )));
        }
    }
    Ok(())
}

/// deploy/00-namespace.yaml and deploy/01-rbac.yaml, as documents.
pub fn deploy_documents() -> Result<Vec<Value>> {
    let deploy = repo_root().join("deploy");
    let mut docs = yaml_documents(&deploy.join("00-namespace.yaml"))?;
    docs.extend(yaml_documents(&deploy.join("01-rbac.yaml"))?);
    Ok(docs)
}

/// The rules of the agent's ClusterRole in deploy/01-rbac.yaml.
pub fn deploy_cluster_role_rules() -> Result<Vec<Value>> {
    let docs = deploy_documents()?;
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .ok_or_else(|| Error::other("deploy/01-rbac.yaml has no ClusterRole"))?;
    Ok(role["rules"].as_array().cloned().unwrap_or_default())
}

impl ControlPlane {
    /// [`ControlPlane::start_with`] the default options.
    pub async fn start() -> Result<ControlPlane> {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    /// Finds the binaries, generates the PKI, starts etcd and the API server and waits
    /// until both are ready (each bounded by [`START_TIMEOUT`]).
    pub async fn start_with(options: ControlPlaneOptions) -> Result<ControlPlane> {
        let binaries = k8s_binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("palisade-kubetest-")
            .tempdir()
            .ctx("creating a temp dir")?;
        let path = dir.path().to_path_buf();
        let pki = certs::generate(&path)?;
        let token = random_token()?;
        std::fs::write(
            path.join("tokens.csv"),
            format!("{token},admin,admin,\"system:masters\"\n"),
        )
        .ctx("writing tokens.csv")?;

        let etcd_client = free_addr()?;
        let etcd_peer = free_addr()?;
        let client_url = format!("http://{etcd_client}");
        let peer_url = format!("http://{etcd_peer}");
        let etcd_args: Vec<String> = vec![
            "--name=default".into(),
            format!("--data-dir={}", path.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let etcd = ChildProcess::spawn("etcd", &binaries.etcd, &etcd_args, &path.join("etcd.log"))?;
        let api = free_addr()?;
        let admin_kubeconfig = path.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &format!("https://{api}"),
            &pki.ca_cert,
            "admin",
            &token,
        )?;
        let mut cp = ControlPlane {
            apiserver: None,
            etcd,
            dir: Some(dir),
            path,
            binaries,
            pki,
            etcd_client,
            api,
            options,
            admin_kubeconfig,
            apiserver_starts: 0,
        };
        cp.wait_etcd().await?;
        cp.start_apiserver().await?;
        Ok(cp)
    }

    async fn wait_etcd(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(r) = http::get(self.etcd_client, "/health", Duration::from_secs(2))
                && r.status == 200
                && r.body.contains("true")
            {
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "kubetest: etcd ready"
                );
                return Ok(());
            }
            if let Some(status) = self.etcd.try_status() {
                return Err(Error::other(format!(
                    "etcd exited ({status}):\n{}",
                    self.etcd.log_tail(30)
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Error::Timeout {
                    what: "etcd /health".into(),
                    after: START_TIMEOUT,
                    detail: self.etcd.log_tail(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn apiserver_args(&self) -> Vec<String> {
        let p = |f: &Path| f.display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://{}", self.etcd_client),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={}", self.api.port()),
            format!("--cert-dir={}", p(&self.path.join("apiserver-certs"))),
            format!("--tls-cert-file={}", p(&self.pki.serving_cert)),
            format!("--tls-private-key-file={}", p(&self.pki.serving_key)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&self.pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&self.pki.sa_key)),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", p(&self.path.join("tokens.csv"))),
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--watch-cache={}", self.options.watch_cache),
            "--profiling=false".into(),
        ];
        if !self.options.strict_ip_cidr_validation {
            args.push("--feature-gates=StrictIPCIDRValidation=false".into());
        }
        if self.options.storage_json {
            args.push("--storage-media-type=application/json".into());
        }
        args
    }

    /// Starts the API server (again, after [`ControlPlane::stop_apiserver`]: same port,
    /// same etcd data) and waits until `/readyz` answers 200.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        if self
            .apiserver
            .as_mut()
            .is_some_and(ChildProcess::is_running)
        {
            return Ok(());
        }
        self.apiserver_starts += 1;
        let log = self
            .path
            .join(format!("kube-apiserver-{}.log", self.apiserver_starts));
        let args = self.apiserver_args();
        let started = Instant::now();
        self.apiserver = Some(ChildProcess::spawn(
            "kube-apiserver",
            &self.binaries.kube_apiserver,
            &args,
            &log,
        )?);
        let client = self.admin_client().await?;
        loop {
            let request = ::http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(Error::other)?;
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await
            {
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, addr = %self.api, "kubetest: kube-apiserver ready");
                return Ok(());
            }
            let apiserver = self.apiserver.as_mut().expect("just started");
            if let Some(status) = apiserver.try_status() {
                return Err(Error::other(format!(
                    "kube-apiserver exited ({status}):\n{}",
                    apiserver.log_tail(40)
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Error::Timeout {
                    what: "kube-apiserver /readyz".into(),
                    after: START_TIMEOUT,
                    detail: apiserver.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the API server: SIGTERM, and SIGKILL if it is still running 5 s later. etcd
    /// keeps running.
    ///
    /// Why the short grace: on SIGTERM kube-apiserver closes its listener at once but keeps
    /// serving the watches it has open while it drains, and does not exit on its own within
    /// 15 s here. The 5 s are the graceful part of a restart (clients see their watches
    /// served, no new connection accepted); the kill then ends them as a restart does.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        if let Some(mut apiserver) = self.apiserver.take() {
            let status = apiserver.terminate(Duration::from_secs(5))?;
            tracing::info!(%status, "kubetest: kube-apiserver stopped");
        }
        Ok(())
    }

    /// The API server's address (whether or not it is running now).
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    pub fn server_url(&self) -> String {
        format!("https://{}", self.api)
    }

    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The temporary folder with every file of this control plane (logs included).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A client with the `system:masters` identity.
    pub async fn admin_client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// The end of the current API server log.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver
            .as_ref()
            .map(|a| a.log_tail(lines))
            .unwrap_or_default()
    }

    /// Applies deploy/00-namespace.yaml and deploy/01-rbac.yaml.
    pub async fn apply_deploy_rbac(&self) -> Result<()> {
        let client = self.admin_client().await?;
        for doc in deploy_documents()? {
            apply_manifest(&client, &doc).await?;
        }
        Ok(())
    }

    /// A token of `namespace/service_account` from the TokenRequest API.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<String> {
        let client = self.admin_client().await?;
        let api: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = api
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .ctx(format!("token request for {namespace}/{service_account}"))?;
        answer.status.and_then(|s| s.token).ok_or_else(|| {
            Error::other(format!(
                "token request for {namespace}/{service_account}: no status.token in the answer"
            ))
        })
    }

    /// Applies deploy/00 + deploy/01, requests a token for the agent's service account and
    /// writes a kubeconfig with it (server: the API server itself). This is the identity a
    /// deployed agent has, with exactly the permissions deploy/ grants.
    pub async fn agent_kubeconfig(&self) -> Result<PathBuf> {
        self.agent_kubeconfig_for_server(&self.server_url()).await
    }

    /// Like [`ControlPlane::agent_kubeconfig`], reaching the API server through `via` (a
    /// [`crate::TcpProxy`] in front of it; TLS passes through, the certificate's
    /// 127.0.0.1 SAN still matches).
    pub async fn agent_kubeconfig_via(&self, via: SocketAddr) -> Result<PathBuf> {
        self.agent_kubeconfig_for_server(&format!("https://{via}"))
            .await
    }

    async fn agent_kubeconfig_for_server(&self, server: &str) -> Result<PathBuf> {
        self.apply_deploy_rbac().await?;
        let token = self
            .service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)
            .await?;
        let port = server.rsplit(':').next().unwrap_or("0");
        let path = self.path.join(format!("agent-{port}.kubeconfig"));
        write_kubeconfig(
            &path,
            server,
            &self.pki.ca_cert,
            AGENT_SERVICE_ACCOUNT,
            &token,
        )?;
        Ok(path)
    }

    /// A kubeconfig for an identity bound to the agent's ClusterRole from deploy/ with its
    /// rule number `rule` (0-based) removed: a service account, ClusterRole and binding all
    /// named `palisade-agent-without-rule-<rule>`. For showing each rule is needed.
    pub async fn agent_kubeconfig_without_rule(&self, rule: usize) -> Result<PathBuf> {
        self.apply_deploy_rbac().await?;
        let mut rules = deploy_cluster_role_rules()?;
        if rule >= rules.len() {
            return Err(Error::other(format!(
                "deploy's ClusterRole has {} rules, no rule {rule}",
                rules.len()
            )));
        }
        rules.remove(rule);
        let name = format!("palisade-agent-without-rule-{rule}");
        let client = self.admin_client().await?;
        let docs = [
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": AGENT_NAMESPACE}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": name}, "rules": rules}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                   "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": AGENT_NAMESPACE}]}),
        ];
        for doc in &docs {
            apply_manifest(&client, doc).await?;
        }
        let token = self.service_account_token(AGENT_NAMESPACE, &name).await?;
        let path = self.path.join(format!("{name}.kubeconfig"));
        write_kubeconfig(&path, &self.server_url(), &self.pki.ca_cert, &name, &token)?;
        Ok(path)
    }

    /// etcd's current revision (from a one-key range request on its JSON gateway).
    pub fn etcd_revision(&self) -> Result<i64> {
        // key "\0" with range_end "\0": every key; limit 1, keys only: just the header.
        let body = r#"{"key":"AA==","range_end":"AA==","limit":1,"keys_only":true}"#;
        let r = http::post_json(
            self.etcd_client,
            "/v3/kv/range",
            body,
            Duration::from_secs(10),
        )?;
        let v: Value = serde_json::from_str(&r.body)
            .map_err(|e| Error::other(format!("etcd range: {e}: {}", r.body)))?;
        let rev = &v["header"]["revision"];
        rev.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| rev.as_i64())
            .ok_or_else(|| Error::other(format!("etcd range: no header.revision in {}", r.body)))
    }

    /// Writes `value` at `key` straight into etcd (its JSON gateway), e.g.
    /// `/registry/networkpolicies/NS/NAME`: the API server serves and watches it without
    /// validating it. Needs [`ControlPlaneOptions::storage_json`].
    pub fn etcd_put_json(&self, key: &str, value: &Value) -> Result<()> {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let body = json!({
            "key": b64(key.as_bytes()),
            "value": b64(value.to_string().as_bytes()),
        })
        .to_string();
        let r = http::post_json(
            self.etcd_client,
            "/v3/kv/put",
            &body,
            Duration::from_secs(10),
        )?;
        if r.status != 200 {
            return Err(Error::other(format!(
                "etcd put {key}: HTTP {}: {}",
                r.status, r.body
            )));
        }
        Ok(())
    }

    /// Compacts etcd at its current revision (physically, i.e. waiting until done), as
    /// `etcdctl compaction --physical $(current revision)` would: every older revision is
    /// gone, so a watch resumed from one gets `410 Gone` (see
    /// [`ControlPlaneOptions::watch_cache`]). Returns the revision compacted at.
    pub fn compact_etcd(&self) -> Result<i64> {
        let revision = self.etcd_revision()?;
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let r = http::post_json(
            self.etcd_client,
            "/v3/kv/compaction",
            &body,
            Duration::from_secs(30),
        )?;
        if r.status != 200 {
            return Err(Error::other(format!(
                "etcd compaction at {revision}: HTTP {}: {}",
                r.status, r.body
            )));
        }
        tracing::info!(revision, "kubetest: etcd compacted");
        Ok(revision)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            let _ = apiserver.kill();
        }
        let _ = self.etcd.kill();
        if std::env::var("PALISADE_KUBETEST_KEEP").as_deref() == Ok("1")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("palisade-kubetest: kept {}", kept.display());
        }
    }
}
