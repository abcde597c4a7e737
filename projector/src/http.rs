//! The admin routes beside `/healthz`, `/readyz` and `/metrics`: `GET /projections`
//! (each projection's status) and `POST /projections/{name}/rebuild` (starts a rebuild
//! and answers 202 at once; its progress shows in `GET /projections`).
//!
//! The routes are declared once, with their OpenAPI operations ([`routes`]): the test of
//! the access table compares [`crate::access::ACCESS`] with that document, so a route
//! added here without a role fails it (and is refused to everyone until it has one).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use event_store::error_chain;
use serde_json::{Value, json};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::AdminError;
use crate::projection::Projection;
use crate::rebuild::RebuildLease;
use crate::status;

/// The admin routes and their OpenAPI operations, from one declaration each.
pub fn routes() -> OpenApiRouter<PgPool> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(start_rebuild))
}

/// The admin routes, to merge with the ops routes.
pub fn router(pool: PgPool) -> Router {
    let (router, _document) = routes().split_for_parts();
    router.fallback(not_found).with_state(pool)
}

async fn not_found() -> AdminError {
    AdminError::NotFound
}

/// Every projection's position, head, lag and state.
#[utoipa::path(
    get,
    path = "/projections",
    responses(
        (status = 200, description = "`{\"items\": [...]}`, one per projection."),
        (status = 503, description = "The database is unavailable.", content_type = "application/problem+json"),
    )
)]
async fn list(State(pool): State<PgPool>) -> Result<Json<Value>, AdminError> {
    let statuses = status::read(&pool).await.map_err(AdminError::Unavailable)?;
    status::publish_metrics(&statuses);
    Ok(Json(json!({ "items": statuses })))
}

/// Starts rebuilding one projection; its progress shows in `GET /projections`.
#[utoipa::path(
    post,
    path = "/projections/{name}/rebuild",
    params(("name" = String, Path, description = "accounts, account_transactions or transfers")),
    responses(
        (status = 202, description = "The rebuild started."),
        (status = 404, description = "No projection has this name.", content_type = "application/problem+json"),
        (status = 409, description = "That projection is being rebuilt already.", content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable.", content_type = "application/problem+json"),
    )
)]
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
