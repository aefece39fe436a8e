//! `/healthz` (the process serves), `/readyz` (first full sync applied and the sources
//! healthy), `/metrics` (Prometheus text format) and `/events` (verdict events as they
//! happen, one JSON object per line; filters `namespace`, `pod`, `verdict`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use palisade_ir::events::Verdict;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::controller::Health;
use crate::events::EventHub;
use crate::metrics::Metrics;

#[derive(Debug, Deserialize)]
struct EventFilter {
    namespace: Option<String>,
    pod: Option<String>,
    verdict: Option<String>,
}

/// `/events`: follows the hub until the client goes away.
fn follow(hub: Option<&EventHub>, filter: EventFilter) -> Response {
    let Some(hub) = hub else {
        return (
            StatusCode::NOT_FOUND,
            "verdict events are off on this agent (started with --events=false, or its backend has none)\n",
        )
            .into_response();
    };
    let verdict = match filter.verdict.as_deref().map(str::parse::<Verdict>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("verdict: {e}\n")).into_response();
        }
    };
    let stream = BroadcastStream::new(hub.subscribe()).filter_map(move |item| {
        let line = match item {
            Ok(event) => {
                if !crate::events::matches(
                    &event,
                    filter.namespace.as_deref(),
                    filter.pod.as_deref(),
                    verdict,
                ) {
                    return None;
                }
                serde_json::to_string(&*event).ok()?
            }
            // A follower too slow for the buffer is told, not silently shortened.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                serde_json::json!({ "missed": n }).to_string()
            }
        };
        Some(Ok::<_, std::convert::Infallible>(format!("{line}\n")))
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    events: Option<Arc<EventHub>>,
) {
    let ready = health.clone();
    let app = Router::new()
        .route(
            "/events",
            get(move |Query(filter): Query<EventFilter>| {
                let hub = events.clone();
                async move { follow(hub.as_deref(), filter) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let health = ready.clone();
                async move {
                    match health.not_ready_reason() {
                        None => (StatusCode::OK, "ready\n".to_string()),
                        Some(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
}
