//! Every audit filter is served by its own index: the plans of the statements the API
//! runs, on a log of 100,000 events, as the planner chooses them with real statistics.

use query_api::audit::AuditFilter;
use sqlx::PgPool;

/// The log's size for the plans: large enough that a sequential scan is a real cost
/// to the planner.
const EVENTS: i64 = 100_000;

async fn plan(pool: &PgPool, filter: &AuditFilter) -> String {
    let rows: Vec<String> = filter
        .statement_after("EXPLAIN", EVENTS)
        .build_query_scalar()
        .fetch_all(pool)
        .await
        .expect("EXPLAIN");
    rows.join("\n")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_audit_filter_is_served_by_its_index_over_100000_events(pool: PgPool) {
    // 1,000 account streams of 100 events; actors repeat every 500 events, correlation
    // ids every 3, one second between events, and `AccountClosed` is rare.
    sqlx::query(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
         data, metadata, recorded_at) \
         SELECT g, gen_random_uuid(), \
                'account-' || lpad(to_hex(g % 1000), 32, '0')::uuid, \
                (g - 1) / 1000 + 1, \
                CASE WHEN g % 1000 = 0 THEN 'AccountClosed' ELSE 'FundsDeposited' END, 1, \
                jsonb_build_object('amount', g), \
                jsonb_build_object('actor', 'actor-' || (g % 500), 'correlation_id', 'corr-' || (g / 3), \
                                   'command', 'deposit'), \
                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' \
         FROM generate_series(1, $1) AS g",
    )
    .bind(EVENTS)
    .execute(&pool)
    .await
    .expect("100,000 events");
    sqlx::query("UPDATE event_store_head SET position = $1")
        .bind(EVENTS)
        .execute(&pool)
        .await
        .expect("head");
    sqlx::query("ANALYZE events")
        .execute(&pool)
        .await
        .expect("ANALYZE");

    let base = || AuditFilter {
        after: 0,
        limit: 50,
        ..AuditFilter::default()
    };
    let cases = [
        (
            "stream_id",
            AuditFilter {
                stream_id: Some(format!("account-{}", uuid::Uuid::from_u128(7))),
                ..base()
            },
            "events_stream_position",
        ),
        (
            "event_type",
            AuditFilter {
                event_type: Some("AccountClosed".into()),
                ..base()
            },
            "events_type_position",
        ),
        (
            "actor",
            AuditFilter {
                actor: Some("actor-7".into()),
                ..base()
            },
            "events_actor_position",
        ),
        (
            "correlation_id",
            AuditFilter {
                correlation_id: Some("corr-4242".into()),
                ..base()
            },
            "events_correlation_position",
        ),
        (
            "since and until",
            AuditFilter {
                since: Some("2026-01-01T10:00:00Z".parse().expect("time")),
                until: Some("2026-01-01T10:05:00Z".parse().expect("time")),
                ..base()
            },
            "events_recorded_at",
        ),
        (
            "actor after a deep cursor",
            AuditFilter {
                actor: Some("actor-7".into()),
                after: 90_000,
                ..base()
            },
            "events_actor_position",
        ),
    ];
    for (name, filter, index) in cases {
        let plan = plan(&pool, &filter).await;
        assert!(
            plan.contains(index),
            "filter by {name} does not use {index}:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan"),
            "filter by {name} scans the table:\n{plan}"
        );
    }
}
