//! The operational endpoints every process serves without a token: `/healthz` (the
//! process runs), `/readyz` (its database and NATS answer) and `/metrics` (Prometheus,
//! with the readiness as gauges, checked at each scrape).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;

/// How long `/readyz` waits for PostgreSQL before calling it unreachable: a load
/// balancer's probe must get an answer well within its own timeout.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub nats: async_nats::Client,
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The `/healthz`, `/readyz` and `/metrics` routes, to merge into a process's router.
pub fn ops_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState {
            readiness,
            metrics: super::telemetry::metrics_handle(),
        })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Whether PostgreSQL and NATS answer, as `(database_ok, nats_ok)`.
async fn check_dependencies(readiness: &Readiness) -> (bool, bool) {
    let database_ok = tokio::time::timeout(
        READINESS_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&readiness.pool),
    )
    .await
    .is_ok_and(|result| result.is_ok());
    let nats_ok = readiness.nats.connection_state() == async_nats::connection::State::Connected;
    (database_ok, nats_ok)
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (database_ok, nats_ok) = check_dependencies(&state.readiness).await;
    let checks = json!({
        "database": if database_ok { "ok" } else { "unreachable" },
        "nats": if nats_ok { "ok" } else { "unreachable" },
    });
    if database_ok && nats_ok {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": checks })),
        )
            .into_response()
    } else {
        let problem = json!({
            "type": "https://eventledger.dev/problems/not-ready",
            "title": "Not ready",
            "status": 503,
            "detail": "a dependency of this process is unreachable",
            "checks": checks,
        });
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/problem+json")],
            problem.to_string(),
        )
            .into_response()
    }
}

/// Renders the metrics, after checking the dependencies as `/readyz` does: the
/// readiness gauges are then as fresh as the scrape, and an alert on them needs no
/// probe of its own.
async fn render_metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let (database_ok, nats_ok) = check_dependencies(&state.readiness).await;
    let up = |ok: bool| if ok { 1.0 } else { 0.0 };
    metrics::gauge!("eventledger_dependency_up", "dependency" => "database").set(up(database_ok));
    metrics::gauge!("eventledger_dependency_up", "dependency" => "nats").set(up(nats_ok));
    metrics::gauge!("eventledger_ready").set(up(database_ok && nats_ok));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
