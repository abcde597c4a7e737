//! The plumbing every process shares, against the real services: the database is
//! created when missing and migrated, and `/healthz`, `/readyz` and `/metrics` answer
//! as operators expect, including 503 while a dependency is unreachable.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use service::{self, Readiness};
use sqlx::PgPool;
use tower::ServiceExt;

const NATS_URL: &str = "nats://127.0.0.1:4222";

async fn get(router: axum::Router, path: &str) -> (StatusCode, String, String) {
    let response = router
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, content_type, String::from_utf8_lossy(&body).into_owned())
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_process_with_its_database_and_nats_reachable_is_ready(pool: PgPool) {
    let nats = service::nats::connect(NATS_URL, "process-test")
        .await
        .expect("nats");
    nats.flush().await.expect("connected");
    let router = service::ops_router(Readiness { pool, nats });

    let (status, _, body) = get(router.clone(), "/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get(router.clone(), "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(r#""database":"ok""#) && body.contains(r#""nats":"ok""#),
        "{body}"
    );

    metrics::counter!("process_test_marker_total").increment(1);
    let (status, content_type, body) = get(router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(body.contains("process_test_marker_total"), "{body}");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_process_whose_nats_is_unreachable_is_alive_but_not_ready(pool: PgPool) {
    // Nothing listens on port 1; the client keeps retrying in the background.
    let nats = service::nats::connect("nats://127.0.0.1:1", "process-test")
        .await
        .expect("client");
    let router = service::ops_router(Readiness { pool, nats });

    let (status, _, _) = get(router.clone(), "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, content_type, body) = get(router, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(content_type, "application/problem+json");
    assert!(
        body.contains(r#""nats":"unreachable""#) && body.contains(r#""database":"ok""#),
        "{body}"
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_process_whose_database_is_unreachable_is_not_ready(pool: PgPool) {
    let nats = service::nats::connect(NATS_URL, "process-test")
        .await
        .expect("nats");
    nats.flush().await.expect("connected");
    pool.close().await;
    let (status, _, body) = get(service::ops_router(Readiness { pool, nats }), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""database":"unreachable""#), "{body}");
}

/// Run on a database name nobody else uses, then dropped: the start-up path a fresh
/// deployment takes, with the session settings every connection gets.
#[tokio::test]
async fn a_missing_database_is_created_and_migrated_on_start() {
    use sqlx::migrate::MigrateDatabase;
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
    let url = format!("{base}/eventledger_start_{}", uuid::Uuid::now_v7().simple());
    assert!(!sqlx::Postgres::database_exists(&url).await.expect("check"));

    let pool = service::database::connect_and_migrate(&url, 2)
        .await
        .expect("start");
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_store_head")
        .fetch_one(&pool)
        .await
        .expect("head");
    assert_eq!(head, 0);
    // Every connection of the pool starts with JIT compilation off, whatever the server's
    // default (on, in PostgreSQL 15).
    for _ in 0..2 {
        let mut connection = pool.acquire().await.expect("connection");
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(&mut *connection)
            .await
            .expect("jit");
        assert_eq!(jit, "off");
    }
    // A second start finds everything in place.
    let again = service::database::connect_and_migrate(&url, 2)
        .await
        .expect("restart");
    again.close().await;
    pool.close().await;
    sqlx::Postgres::force_drop_database(&url).await.expect("drop");
}
