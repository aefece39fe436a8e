//! Palisade's validation against the real kube-apiserver: every row of the model's
//! validation tables (`palisade-model/tests/common/validation_rows.rs`) is sent to the API
//! server the harness builds (v1.37) as a server-side dry run (`?dryRun=All`, kubectl's
//! strict field validation), and the two must agree on accept/reject and, for rejections,
//! on the field paths. Rows of an older version (StrictIPCIDRValidation off before 1.36)
//! go to a second API server started with that gate off.
//!
//! Pod status rows (`status.podIPs`) are checked as the API server checks them: on a
//! status update of a created pod (`pods/status`, dry run), since a create drops status.
//!
//! The row objects describe what Palisade reads; fields the API server requires but
//! Palisade does not read (a container's image, a Job template's restartPolicy, a CronJob's
//! schedule) are filled in first, the same for both readers.
//!
//! Needs the kube-apiserver and etcd binaries (`scripts/build-k8s.sh`); no root.

#[path = "../../palisade-model/tests/common/validation_rows.rs"]
mod rows;

use std::collections::BTreeSet;

use kube::Client;
use palisade_kubetest::{ControlPlane, ControlPlaneOptions, k8s_binaries};
use palisade_model::load::{LoadError, Loaded, load_str_with};
use palisade_model::{KubeVersion, Options};
use serde_json::{Value, json};

/// The API path of a row's object, by kind.
fn collection(v: &Value) -> Option<String> {
    let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
    Some(match v["kind"].as_str()? {
        "Namespace" => "/api/v1/namespaces".to_string(),
        "Pod" => format!("/api/v1/namespaces/{ns}/pods"),
        "ReplicationController" => format!("/api/v1/namespaces/{ns}/replicationcontrollers"),
        "NetworkPolicy" => format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
        "Deployment" => format!("/apis/apps/v1/namespaces/{ns}/deployments"),
        "StatefulSet" => format!("/apis/apps/v1/namespaces/{ns}/statefulsets"),
        "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets"),
        "ReplicaSet" => format!("/apis/apps/v1/namespaces/{ns}/replicasets"),
        "Job" => format!("/apis/batch/v1/namespaces/{ns}/jobs"),
        "CronJob" => format!("/apis/batch/v1/namespaces/{ns}/cronjobs"),
        _ => return None,
    })
}

/// Gives a pod spec what the API server demands and Palisade does not read.
fn complete_pod_spec(spec: &mut Value, restart_never: bool) {
    if !spec.is_object() {
        *spec = json!({});
    }
    match spec["containers"].as_array_mut() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter_mut().enumerate() {
                if c.get("name").is_none() {
                    c["name"] = json!(format!("c{i}"));
                }
                if c.get("image").is_none() {
                    c["image"] = json!("i");
                }
            }
        }
        _ => spec["containers"] = json!([{"name": "c", "image": "i"}]),
    }
    if let Some(cs) = spec["initContainers"].as_array_mut() {
        for c in cs {
            if c.get("image").is_none() {
                c["image"] = json!("i");
            }
        }
    }
    if restart_never && spec.get("restartPolicy").is_none() {
        spec["restartPolicy"] = json!("Never");
    }
}

fn complete(v: &mut Value) {
    match v["kind"].as_str().unwrap_or_default() {
        "Pod" => complete_pod_spec(&mut v["spec"], false),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController"
            if v["spec"]["template"].is_object() =>
        {
            complete_pod_spec(&mut v["spec"]["template"]["spec"], false);
        }
        "Job" => complete_pod_spec(&mut v["spec"]["template"]["spec"], true),
        "CronJob" => {
            if v["spec"]["schedule"].is_null() {
                v["spec"]["schedule"] = json!("* * * * *");
            }
            complete_pod_spec(
                &mut v["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                true,
            );
        }
        _ => {}
    }
}

/// The API server's verdict: None = accepted, Some(field paths) = rejected.
async fn server_verdict(client: &Client, obj: &Value) -> Result<Option<BTreeSet<String>>, String> {
    let path = collection(obj).ok_or("no API path for this kind")?;
    let status = obj.get("status").cloned().filter(|s| !s.is_null());
    let result = if let Some(status) = status {
        // A create drops status: create the pod for real, then dry-run its status update.
        let mut spec_only = obj.clone();
        spec_only.as_object_mut().expect("object").remove("status");
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let created = send(client, "POST", &path, &spec_only, "").await;
        if let Err(fields) = created {
            return Ok(Some(fields));
        }
        let patch = json!({"status": status});
        let r = send(
            client,
            "PATCH",
            &format!("{path}/{name}/status"),
            &patch,
            "&dryRun=All",
        )
        .await;
        send(client, "DELETE", &format!("{path}/{name}"), &json!({}), "")
            .await
            .map_err(|e| format!("deleting the status row's pod: {e:?}"))?;
        r
    } else {
        send(client, "POST", &path, obj, "&dryRun=All").await
    };
    Ok(result.err())
}

/// One request; Err(field paths of the causes) when the API server rejects it.
async fn send(
    client: &Client,
    method: &str,
    path: &str,
    body: &Value,
    extra: &str,
) -> Result<(), BTreeSet<String>> {
    let uri = format!("{path}?fieldValidation=Strict{extra}");
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(serde_json::to_vec(body).expect("json"))
        .expect("request");
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => {
            let mut fields: BTreeSet<String> = status
                .details
                .iter()
                .flat_map(|d| d.causes.iter())
                .map(|c| c.field.clone())
                .collect();
            if fields.is_empty() {
                fields.insert(format!("<no field: {}>", status.message));
            }
            Err(fields)
        }
        Err(e) => Err(BTreeSet::from([format!("<request failed: {e}>")])),
    }
}

/// Palisade's verdict on the same object.
fn palisade_verdict(version: KubeVersion, yaml: &str) -> Result<Option<BTreeSet<String>>, String> {
    let mut loaded = Loaded::default();
    let opts = Options {
        version,
        ..Default::default()
    };
    load_str_with(yaml, "row.yaml", &opts, &mut loaded);
    match loaded.errors.as_slice() {
        [] => Ok(None),
        [LoadError::Invalid { invalid, .. }] => Ok(Some(
            invalid.errors.iter().map(|e| e.field.clone()).collect(),
        )),
        other => Err(format!(
            "not a validation error: {:?}",
            other.iter().map(ToString::to_string).collect::<Vec<_>>()
        )),
    }
}

struct Case {
    name: &'static str,
    yaml: String,
    version: KubeVersion,
    /// What the row asserts (so that a row that no longer says what the table thinks is
    /// caught here too).
    valid: bool,
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = rows::invalid_rows()
        .into_iter()
        .map(|r| Case {
            name: r.name,
            yaml: r.yaml,
            version: r.version,
            valid: false,
        })
        .collect();
    out.extend(rows::valid_rows().into_iter().map(|r| Case {
        name: r.name,
        yaml: r.yaml,
        version: r.version,
        valid: true,
    }));
    out
}

async fn check_rows(cp: &ControlPlane, rows: &[&Case], failures: &mut Vec<String>) {
    let client = cp.admin_client().await.expect("admin client");
    // Namespaces the rows live in.
    for ns in ["ns", "default"] {
        let _ = send(
            &client,
            "POST",
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            "",
        )
        .await;
    }
    for case in rows {
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&case.yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("row YAML"))
            .collect();
        let [doc] = docs.as_slice() else {
            failures.push(format!("{}: not one document", case.name));
            continue;
        };
        let mut obj = doc.clone();
        complete(&mut obj);
        let completed = serde_yaml_ng::to_string(&obj).expect("yaml");
        let ours = match palisade_verdict(case.version, &completed) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: Palisade: {e}", case.name));
                continue;
            }
        };
        if ours.is_none() != case.valid {
            failures.push(format!(
                "{}: the row says {}, Palisade says {ours:?} (after completing the object)",
                case.name,
                if case.valid { "valid" } else { "invalid" }
            ));
            continue;
        }
        let theirs = match server_verdict(&client, &obj).await {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: API server: {e}", case.name));
                continue;
            }
        };
        // An object in a namespace that cannot exist (its name is invalid) is rejected
        // before validation: both reject, but only Palisade can name the field.
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let unknown_ns = format!("<no field: namespaces \"{ns}\" not found>");
        if ours
            .as_ref()
            .is_some_and(|f| f.contains("metadata.namespace"))
            && theirs
                .as_ref()
                .is_some_and(|f| f.len() == 1 && f.contains(&unknown_ns))
        {
            continue;
        }
        if ours != theirs {
            failures.push(format!(
                "{} (Kubernetes {}): Palisade {ours:?}, API server {theirs:?}",
                case.name, case.version
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_row_agrees_with_the_real_api_server() {
    if let Err(e) = k8s_binaries() {
        assert_ne!(
            std::env::var("PALISADE_REQUIRE_ROOT_TESTS").as_deref(),
            Ok("1"),
            "{e}"
        );
        palisade_kubetest::report(format!("SKIPPED: {e}"));
        return;
    }
    let cases = cases();
    let mut failures = Vec::new();
    let newest: Vec<&Case> = cases
        .iter()
        .filter(|c| c.version == KubeVersion::NEWEST)
        .collect();
    let older: Vec<&Case> = cases
        .iter()
        .filter(|c| c.version != KubeVersion::NEWEST)
        .collect();
    assert!(older.iter().all(|c| !c.version.strict_ip_cidr()));

    let cp = ControlPlane::start().await.expect("control plane");
    check_rows(&cp, &newest, &mut failures).await;
    drop(cp);
    // The only version-dependent rule so far: StrictIPCIDRValidation, off before 1.36.
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        strict_ip_cidr_validation: false,
        ..Default::default()
    })
    .await
    .expect("control plane without StrictIPCIDRValidation");
    check_rows(&cp, &older, &mut failures).await;

    palisade_kubetest::report(format!(
        "validation vs kube-apiserver: {} rows at {}, {} rows at an older version, {} disagreements",
        newest.len(),
        KubeVersion::NEWEST,
        older.len(),
        failures.len()
    ));
    assert!(
        failures.is_empty(),
        "{} of {} rows disagree:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
