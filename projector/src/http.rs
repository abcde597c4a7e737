//! The admin routes beside `/healthz`, `/readyz` and `/metrics`: `GET /projections`
//! (each projection's status) and `POST /projections/{name}/rebuild` (starts a rebuild
//! and answers 202 at once; its progress shows in `GET /projections`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use event_store::error_chain;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::error::AdminError;
use crate::projection::Projection;
use crate::rebuild::RebuildLease;
use crate::status;

/// The admin routes, to merge with the ops routes.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/projections", get(list))
        .route("/projections/{name}/rebuild", post(start_rebuild))
        .fallback(not_found)
        .with_state(pool)
}

async fn not_found() -> AdminError {
    AdminError::NotFound
}

async fn list(State(pool): State<PgPool>) -> Result<Json<Value>, AdminError> {
    let statuses = status::read(&pool).await.map_err(AdminError::Unavailable)?;
    status::publish_metrics(&statuses);
    Ok(Json(json!({ "items": statuses })))
}

async fn start_rebuild(
    State(pool): State<PgPool>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let projection: Projection = name.parse()?;
    // Taken here, not in the task, so that a second request gets its 409 at once.
    let lease = RebuildLease::acquire(&pool, &[projection]).await?;
    tokio::spawn(async move {
        if let Err(error) = lease.run(&pool).await {
            tracing::error!(projection = %projection, error = %error_chain(&error), "rebuild failed");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "projection": projection.name(), "status": "rebuilding" })),
    ))
}
