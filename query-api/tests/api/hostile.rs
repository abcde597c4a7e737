//! Hostile input over real HTTP: injection text in every path id, filter, cursor and
//! number parameter, control characters, invalid UTF-8, numbers beyond every integer
//! type, repeated parameters and oversized headers. Each is a 4xx
//! `application/problem+json` (or, for a text filter, an inert filter that matches
//! nothing), never a 500, and the log is untouched. Also the HTTP limits as `run` serves
//! them: the live tail is not cut by the request timeout, and its own cap holds.

use std::time::{Duration, Instant};

use domain::AccountId;
use event_store::ExpectedVersion;
use query_api::live::LiveTails;
use service::HttpLimits;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, deposited, opened, spawn_app};

/// Text that breaks a query built by string concatenation.
const INJECTIONS: &[&str] = &[
    "' OR '1'='1",
    "'; DROP TABLE events; --",
    "1 OR 1=1",
    "1; SELECT pg_sleep(10)--",
    "$1",
    "%' UNION SELECT * FROM pii_keys --",
];

async fn event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .expect("count events")
}

/// Two events on one account, projected into the account read model.
async fn seed(app: &TestApp) -> Uuid {
    let id = Uuid::now_v7();
    let account = AccountId::from(id);
    app.append(
        account,
        ExpectedVersion::NoStream,
        vec![opened(account), deposited(account, 10)],
        "alice",
        "c-1",
    )
    .await;
    id
}

/// Percent-encodes everything but unreserved characters.
fn escape(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn injection_text_in_path_ids_cursors_and_numbers_is_a_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = seed(&app).await;
    let events = event_count(&app).await;
    for injection in INJECTIONS {
        let text = escape(injection);
        let paths = [
            format!("/accounts/{text}"),
            format!("/accounts/{text}/transactions"),
            format!("/accounts/{text}/history?at_position=1"),
            format!("/transfers/{text}"),
            format!("/audit/streams/{text}"),
            format!("/audit/streams/account-{text}"),
            format!("/accounts?status={text}"),
            format!("/accounts?currency={text}"),
            format!("/accounts?cursor={text}"),
            format!("/accounts?limit={text}"),
            format!("/accounts/{account}/transactions?cursor={text}"),
            format!("/accounts/{account}/transactions?limit={text}"),
            format!("/accounts/{account}/history?at_position={text}"),
            format!("/accounts/{account}/history?at_time={text}"),
            format!("/audit/events?after={text}"),
            format!("/audit/events?limit={text}"),
            format!("/audit/events?since={text}"),
            format!("/audit/events?until={text}"),
            format!("/audit/events?min_position={text}"),
            format!("/audit/events?min_position=1&wait_ms={text}"),
            format!("/audit/events/live?after={text}"),
            format!("/audit/verify?from={text}"),
            format!("/audit/verify?to={text}"),
            format!("/projections?min_position={text}"),
        ];
        for path in paths {
            app.get_problem(&path, 400, "validation").await;
        }
    }
    assert_eq!(event_count(&app).await, events);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn injection_text_in_audit_filters_is_inert_text_that_matches_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    seed(&app).await;
    let events = event_count(&app).await;
    for injection in INJECTIONS {
        let text = escape(injection);
        for filter in ["stream_id", "event_type", "actor", "correlation_id"] {
            // Were the text spliced into SQL, `' OR '1'='1` would match every event.
            let page = app.get_json(&format!("/audit/events?{filter}={text}"), 200).await;
            assert_eq!(page["items"], serde_json::json!([]), "{filter}={injection}");
        }
    }
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .expect("events still there");
    assert_eq!(tables, events);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn control_characters_and_invalid_utf8_are_a_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    seed(&app).await;
    let events = event_count(&app).await;
    for filter in ["stream_id", "event_type", "actor", "correlation_id"] {
        // PostgreSQL refuses a NUL in text: it must never reach it.
        for bad in ["%00", "a%00b", "line%0Abreak", "%1B%5B31m"] {
            app.get_problem(&format!("/audit/events?{filter}={bad}"), 400, "validation")
                .await;
        }
    }
    for path in [
        "/accounts/%00",
        "/accounts/%FF%FE",
        "/accounts/%C3%28/transactions",
        "/transfers/%ED%A0%80",
        "/audit/streams/%00",
        "/audit/streams/account-%FF",
    ] {
        app.get_problem(path, 400, "validation").await;
    }
    // A malformed percent-escape in a filter is replaced, not trusted: still no match.
    let page = app.get_json("/audit/events?actor=%FF%FE", 200).await;
    assert_eq!(page["items"], serde_json::json!([]));
    assert_eq!(event_count(&app).await, events);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn numbers_beyond_the_integer_types_are_a_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = seed(&app).await;
    let events = event_count(&app).await;
    let huge = [
        "1e400",
        "99999999999999999999999",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "1.5",
        "-1",
        "0x10",
        "+",
        "",
    ];
    for number in huge {
        let number = escape(number);
        for path in [
            format!("/accounts?limit={number}"),
            format!("/audit/events?after={number}"),
            format!("/audit/events?limit={number}"),
            format!("/accounts/{account}?min_position={number}"),
            format!("/accounts/{account}?min_position=1&wait_ms={number}"),
            format!("/accounts/{account}/history?at_position={number}"),
            format!("/audit/events/live?after={number}"),
            format!("/audit/verify?from={number}"),
            format!("/audit/verify?to={number}"),
        ] {
            app.get_problem(&path, 400, "validation").await;
        }
    }
    for time in [
        "+275760-09-13T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-11-24T25:00:00Z",
    ] {
        let time = escape(time);
        app.get_problem(&format!("/audit/events?since={time}"), 400, "validation")
            .await;
        app.get_problem(
            &format!("/accounts/{account}/history?at_time={time}"),
            400,
            "validation",
        )
        .await;
    }
    // The largest position is a valid position with nothing after it.
    let page = app.get_json("/audit/events?after=9223372036854775807", 200).await;
    assert_eq!(page["items"], serde_json::json!([]));
    // A cursor whose number does not fit, or that is far too long.
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    for cursor in [
        encode("transaction:99999999999999999999"),
        encode("transaction:1e400"),
        encode("transaction:' OR 1=1"),
        "A".repeat(10_000),
    ] {
        app.get_problem(
            &format!("/accounts/{account}/transactions?cursor={cursor}"),
            400,
            "validation",
        )
        .await;
    }
    for cursor in [
        encode("account:' OR 1=1"),
        encode("account:00000000-0000-0000-0000-00000000000%"),
    ] {
        app.get_problem(
            &format!("/accounts?cursor={}", escape(&cursor)),
            400,
            "validation",
        )
        .await;
    }
    assert_eq!(event_count(&app).await, events);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_parameter_given_twice_is_a_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = seed(&app).await;
    for path in [
        "/audit/events?limit=1&limit=1000".to_owned(),
        "/audit/events?actor=alice&actor=bob".to_owned(),
        "/accounts?status=open&status=closed".to_owned(),
        format!("/accounts/{account}?min_position=0&min_position=5"),
    ] {
        app.get_problem(&path, 400, "validation").await;
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn overlong_parameters_and_headers_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    seed(&app).await;
    let events = event_count(&app).await;
    for filter in ["stream_id", "event_type", "actor", "correlation_id"] {
        let long = "a".repeat(10_000);
        app.get_problem(&format!("/audit/events?{filter}={long}"), 400, "validation")
            .await;
    }
    app.get_problem(
        &format!("/audit/streams/{}", "a".repeat(10_000)),
        400,
        "validation",
    )
    .await;
    // A Last-Event-ID that is not a position.
    for value in ["' OR 1=1", "99999999999999999999", "-1"] {
        let response = app
            .client
            .get(format!("{}/audit/events/live", app.address))
            .header("last-event-id", value)
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 400, "{value}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }
    // Headers past the server's limit, as `run` serves the API.
    let server = LimitedServer::start(&app, HttpLimits::default()).await;
    let response = app
        .client
        .get(server.url("/projections"))
        .header("x-padding", "p".repeat(20 * 1024))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 431);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    // A method the route does not have.
    let response = app
        .client
        .post(format!("{}/audit/events", app.address))
        .header("content-type", "text/plain")
        .body("'; DROP TABLE events; --")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(event_count(&app).await, events);
}

/// The app's state served as `run` serves it (`serve_limited`), on its own port.
struct LimitedServer {
    address: String,
    stop: tokio_util::sync::CancellationToken,
}

impl LimitedServer {
    async fn start(app: &TestApp, limits: HttpLimits) -> Self {
        Self::start_with(app.state.clone(), limits).await
    }

    async fn start_with(state: query_api::AppState, limits: HttpLimits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let address = format!("http://{}", listener.local_addr().expect("local address"));
        let stop = tokio_util::sync::CancellationToken::new();
        let stopping = stop.clone();
        tokio::spawn(async move {
            query_api::serve_limited(
                listener,
                state,
                &limits,
                async move { stopping.cancelled().await },
            )
            .await
        });
        Self { address, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }
}

impl Drop for LimitedServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_query_slower_than_the_timeout_is_cut_but_the_live_tail_is_not(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = seed(&app).await;
    let limits = HttpLimits {
        request_timeout_ms: 300,
        ..HttpLimits::default()
    };
    let server = LimitedServer::start(&app, limits).await;
    // A read that waits 5 s for a position the log never reaches is cut at 300 ms.
    let started = Instant::now();
    let response = app
        .client
        .get(server.url(&format!("/accounts/{account}?min_position=1000&wait_ms=5000")))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.expect("problem");
    assert_eq!(body["type"], "https://eventledger.dev/problems/timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // The live tail stays open well past the timeout and still delivers what commits.
    let mut tail = app
        .client
        .get(server.url("/audit/events/live"))
        .send()
        .await
        .expect("answer");
    assert_eq!(tail.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let later = AccountId::from(Uuid::now_v7());
    app.append(
        later,
        ExpectedVersion::NoStream,
        vec![opened(later)],
        "bob",
        "c-2",
    )
    .await;
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received.contains("id: 3") && !received.contains("id:3") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, tail.chunk())
            .await
            .expect("the tail delivered position 3 within 10 s")
            .expect("the tail is still open")
            .expect("the tail did not end");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn live_tails_past_their_cap_are_a_503_problem(pool: PgPool) {
    let app = spawn_app(pool).await;
    seed(&app).await;
    let state = app.state.clone().with_live_tails(LiveTails::new(1));
    let server = LimitedServer::start_with(state, HttpLimits::default()).await;
    let first = app
        .client
        .get(server.url("/audit/events/live"))
        .send()
        .await
        .expect("answer");
    assert_eq!(first.status().as_u16(), 200);
    let second = app
        .client
        .get(server.url("/audit/events/live"))
        .send()
        .await
        .expect("answer");
    assert_eq!(second.status().as_u16(), 503);
    assert_eq!(second.headers()["content-type"], "application/problem+json");
    assert!(second.headers().contains_key("retry-after"));
    drop(first);
}
