//! The event store against a real PostgreSQL, one fresh database per test: atomic
//! appends with expected versions, duplicate detection, group commit, the append-only
//! table, and positions that no reader can skip (guarantee 2).

use std::time::Duration;

use event_store::append::append_batch_in;
use event_store::{
    AppendError, AppendRejection, AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StreamWrite,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn metadata() -> Metadata {
    Metadata {
        actor: "test".into(),
        correlation_id: "correlation-1".into(),
        causation_id: None,
        command: "Test".into(),
        idempotency_key: None,
        trace: None,
    }
}

fn event(n: i64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "FundsDeposited".into(),
        schema_version: 1,
        data: json!({ "amount": n }),
        metadata: metadata(),
    }
}

fn stream() -> String {
    format!("account-{}", Uuid::now_v7())
}

fn one(stream_id: &str, expected: ExpectedVersion, count: i64) -> AppendRequest {
    AppendRequest::single(stream_id, expected, (1..=count).map(event).collect())
}

async fn positions(store: &EventStore) -> Vec<i64> {
    store
        .read_all(0, 10_000)
        .await
        .expect("read all")
        .iter()
        .map(|event| event.position)
        .collect()
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_append_is_read_back_in_version_order_with_contiguous_positions(pool: PgPool) {
    let store = EventStore::new(pool);
    let stream_id = stream();
    let first = store
        .append(one(&stream_id, ExpectedVersion::NoStream, 3))
        .await
        .expect("first");
    let second = store
        .append(one(&stream_id, ExpectedVersion::Exact(3), 2))
        .await
        .expect("second");

    assert_eq!((first.first_position, first.last_position), (1, 3));
    assert_eq!((second.first_position, second.last_position), (4, 5));
    assert_eq!(second.streams[0].version, 5);
    let events = store.read_stream(&stream_id, 0).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(events[3].data, json!({ "amount": 1 }));
    assert_eq!(events[0].metadata, metadata());
    assert_eq!(store.read_stream(&stream_id, 3).await.expect("tail").len(), 2);
    assert_eq!(store.head().await.expect("head"), 5);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_wrong_expected_version_is_rejected_and_writes_nothing(pool: PgPool) {
    let store = EventStore::new(pool);
    let stream_id = stream();
    store
        .append(one(&stream_id, ExpectedVersion::NoStream, 2))
        .await
        .expect("first");

    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
    ] {
        let error = store
            .append(one(&stream_id, expected, 1))
            .await
            .expect_err("conflict");
        assert!(
            matches!(
                error,
                AppendError::Rejected(AppendRejection::WrongExpectedVersion { actual: 2, .. })
            ),
            "{error:?}"
        );
    }
    let missing = store
        .append(one(&stream(), ExpectedVersion::Exact(1), 1))
        .await
        .expect_err("missing");
    assert!(matches!(
        missing,
        AppendError::Rejected(AppendRejection::WrongExpectedVersion { actual: 0, .. })
    ));
    assert_eq!(positions(&store).await, vec![1, 2]);
    store
        .append(one(&stream_id, ExpectedVersion::Any, 1))
        .await
        .expect("any");
    assert_eq!(store.head().await.expect("head"), 3);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_multi_stream_append_is_all_or_nothing(pool: PgPool) {
    let store = EventStore::new(pool);
    let (from, to, transfer) = (stream(), stream(), format!("transfer-{}", Uuid::now_v7()));
    store
        .append(one(&from, ExpectedVersion::NoStream, 1))
        .await
        .expect("from");
    store
        .append(one(&to, ExpectedVersion::NoStream, 1))
        .await
        .expect("to");

    let transfer_request = |to_expected| AppendRequest {
        writes: vec![
            StreamWrite {
                stream_id: from.clone(),
                expected: ExpectedVersion::Exact(1),
                events: vec![event(1)],
            },
            StreamWrite {
                stream_id: to.clone(),
                expected: to_expected,
                events: vec![event(2)],
            },
            StreamWrite {
                stream_id: transfer.clone(),
                expected: ExpectedVersion::NoStream,
                events: vec![event(3)],
            },
        ],
    };
    let error = store
        .append(transfer_request(ExpectedVersion::Exact(7)))
        .await
        .expect_err("to conflicts");
    assert!(matches!(
        error,
        AppendError::Rejected(AppendRejection::WrongExpectedVersion { .. })
    ));
    assert_eq!(
        positions(&store).await,
        vec![1, 2],
        "nothing of the failed transfer is stored"
    );
    assert!(store.read_stream(&transfer, 0).await.expect("read").is_empty());

    let outcome = store
        .append(transfer_request(ExpectedVersion::Exact(1)))
        .await
        .expect("transfer");
    assert_eq!((outcome.first_position, outcome.last_position), (3, 5));
    assert_eq!(
        outcome.streams.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_event_id_is_stored_at_most_once(pool: PgPool) {
    let store = EventStore::new(pool);
    let original = event(1);
    store
        .append(AppendRequest::single(
            stream(),
            ExpectedVersion::Any,
            vec![original.clone()],
        ))
        .await
        .expect("first");

    let again = store
        .append(AppendRequest::single(
            stream(),
            ExpectedVersion::Any,
            vec![original.clone()],
        ))
        .await;
    assert!(
        matches!(again, Err(AppendError::Rejected(AppendRejection::DuplicateEvent { event_id })) if event_id == original.event_id)
    );
    let twice_in_one = store
        .append(AppendRequest::single(
            stream(),
            ExpectedVersion::Any,
            vec![event(2), event(3)]
                .into_iter()
                .chain([original.clone()])
                .collect(),
        ))
        .await;
    assert!(matches!(
        twice_in_one,
        Err(AppendError::Rejected(AppendRejection::DuplicateEvent { .. }))
    ));
    let fresh = event(4);
    let same_twice = store
        .append(AppendRequest::single(
            stream(),
            ExpectedVersion::Any,
            vec![fresh.clone(), fresh],
        ))
        .await;
    assert!(matches!(
        same_twice,
        Err(AppendError::Rejected(AppendRejection::DuplicateEvent { .. }))
    ));
    assert_eq!(positions(&store).await, vec![1]);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_group_commit_rejects_only_the_conflicting_requests_and_chains_the_rest(pool: PgPool) {
    let store = EventStore::new(pool);
    let (a, b) = (stream(), stream());
    store
        .append(one(&b, ExpectedVersion::NoStream, 1))
        .await
        .expect("b");

    let batch = vec![
        one(&a, ExpectedVersion::NoStream, 1),
        one(&a, ExpectedVersion::Exact(1), 2), // chains on the request before it
        one(&b, ExpectedVersion::NoStream, 1), // b exists: rejected
        one(&a, ExpectedVersion::Exact(1), 1), // a is at 3 by now: rejected
        AppendRequest { writes: vec![] },
        one(&b, ExpectedVersion::Exact(1), 1),
    ];
    let outcomes = store.append_batch(&batch).await.expect("batch");
    let accepted: Vec<Option<(i64, i64)>> = outcomes
        .iter()
        .map(|outcome| outcome.as_ref().ok().map(|o| (o.first_position, o.last_position)))
        .collect();
    assert_eq!(
        accepted,
        vec![Some((2, 2)), Some((3, 4)), None, None, None, Some((5, 5))]
    );
    assert!(matches!(outcomes[4], Err(AppendRejection::Invalid(_))));
    assert_eq!(positions(&store).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(store.read_stream(&a, 0).await.expect("a").len(), 3);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_events_table_refuses_updates_deletes_and_truncation(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(one(&stream(), ExpectedVersion::Any, 2))
        .await
        .expect("append");
    for statement in [
        "UPDATE events SET data = '{}'::jsonb",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE events SET recorded_at = now() WHERE position = 1",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.expect_err(statement);
        assert!(error.to_string().contains("append-only"), "{statement}: {error}");
    }
    assert_eq!(positions(&store).await, vec![1, 2]);
}

/// Guarantee 2, forced: transaction A takes its positions first and holds them; B starts
/// later and tries to commit first. B cannot commit before A, so a reader never sees B's
/// position while A's is still missing, and when A rolls back B gets A's positions: no
/// hole either way.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_later_append_cannot_commit_before_an_earlier_one_so_no_reader_skips(pool: PgPool) {
    let store = EventStore::new(pool.clone());

    for a_commits in [true, false] {
        let before = store.head().await.expect("head");
        let mut a = store.begin().await.expect("begin a");
        let a_outcome = append_batch_in(&mut a, &[one(&stream(), ExpectedVersion::Any, 2)])
            .await
            .expect("a");
        let a_first = a_outcome[0].as_ref().expect("a accepted").first_position;
        assert_eq!(a_first, before + 1);

        // B starts after A and would like to commit first.
        let b_store = store.clone();
        let b = tokio::spawn(async move { b_store.append(one(&stream(), ExpectedVersion::Any, 1)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!b.is_finished(), "B committed while A held earlier positions");
        assert_eq!(
            store.read_all(before, 100).await.expect("read").len(),
            0,
            "a reader sees neither"
        );
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .expect("activity");
        assert_eq!(waiting, 1, "B waits on A's head lock");

        if a_commits {
            a.commit().await.expect("commit a");
        } else {
            a.rollback().await.expect("rollback a");
        }
        let b_outcome = b.await.expect("join").expect("b appended");
        let expected_b = if a_commits { before + 3 } else { before + 1 };
        assert_eq!(
            b_outcome.first_position, expected_b,
            "B follows A's positions, or takes them back"
        );
        let seen: Vec<i64> = store
            .read_all(before, 100)
            .await
            .expect("read")
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(seen, (before + 1..=expected_b).collect::<Vec<_>>());
    }
}

/// Many writers and a tailing reader at once: the reader moves its checkpoint along
/// whatever it sees, and still ends up with every event exactly once, in order.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_tailing_reader_never_skips_an_event_under_concurrent_writers(pool: PgPool) {
    const WRITERS: usize = 16;
    const APPENDS_PER_WRITER: usize = 40;
    let store = EventStore::new(pool);
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..APPENDS_PER_WRITER {
                    let size = (writer + n) % 3 + 1;
                    store
                        .append(one(&stream(), ExpectedVersion::NoStream, size as i64))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let expected_total: i64 = (0..WRITERS)
        .flat_map(|writer| (0..APPENDS_PER_WRITER).map(move |n| ((writer + n) % 3 + 1) as i64))
        .sum();

    let mut checkpoint = 0;
    while checkpoint < expected_total {
        // read_all itself asserts contiguity; check it here too, where it is consumed.
        for event in store.read_all(checkpoint, 500).await.expect("contiguous read") {
            assert_eq!(event.position, checkpoint + 1);
            checkpoint = event.position;
        }
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(checkpoint, expected_total);
    assert_eq!(store.head().await.expect("head"), expected_total);
}

/// Concurrent writers racing on one stream with exact versions: each version is won by
/// exactly one of them, and the losers see a conflict, never a merge.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn concurrent_writers_on_one_stream_each_version_is_won_once(pool: PgPool) {
    let store = EventStore::new(pool);
    let stream_id = stream();
    store
        .append(one(&stream_id, ExpectedVersion::NoStream, 1))
        .await
        .expect("open");
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (store, stream_id) = (store.clone(), stream_id.clone());
            tokio::spawn(async move { store.append(one(&stream_id, ExpectedVersion::Exact(1), 1)).await })
        })
        .collect();
    let mut wins = 0;
    for racer in racers {
        match racer.await.expect("join") {
            Ok(_) => wins += 1,
            Err(AppendError::Rejected(AppendRejection::WrongExpectedVersion { actual: 2, .. })) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.read_stream(&stream_id, 0).await.expect("read").len(), 2);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn streaming_the_whole_log_yields_every_event_in_order(pool: PgPool) {
    use futures::TryStreamExt;
    let store = EventStore::new(pool);
    for _ in 0..5 {
        store
            .append(one(&stream(), ExpectedVersion::Any, 3))
            .await
            .expect("append");
    }
    let streamed: Vec<i64> = store
        .stream_all(4, 12)
        .map_ok(|event| event.position)
        .try_collect()
        .await
        .expect("stream");
    assert_eq!(streamed, (5..=12).collect::<Vec<_>>());
    assert_eq!(
        store
            .read_all(10, 2)
            .await
            .expect("page")
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        vec![11, 12]
    );
}
