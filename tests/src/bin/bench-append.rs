//! Append throughput of the event store: events/s for 1, 10 and 100 events per append,
//! from 1 and 16 concurrent writers, next to PostgreSQL's plain single-row INSERT commit
//! rate measured in the same run, and the group commit the command API uses (many
//! single-event requests per transaction). Prints a Markdown table.
//!
//! `cargo run --release -p tests --bin bench-append -- --seconds 5`

use std::time::Duration;

use clap::Parser;
use event_store::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent};
use serde_json::json;
use tests::bench::{BenchDatabase, BenchDatabaseArgs, machine, plain_insert_commit_rate, rate};
use uuid::Uuid;

tests::bench_allocator!();

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    database: BenchDatabaseArgs,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

fn events(count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|n| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "FundsDeposited".into(),
            schema_version: 1,
            data: json!({ "account_id": Uuid::nil(), "amount": n + 1, "reference": "bench" }),
            metadata: Metadata {
                actor: "bench".into(),
                correlation_id: Uuid::now_v7().to_string(),
                causation_id: None,
                command: "Deposit".into(),
                idempotency_key: None,
                trace: None,
            },
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds);
    let database = BenchDatabase::create(&args.database.database_url, 20).await?;
    let store = EventStore::new(database.pool.clone());

    println!("Machine: {}", machine());
    println!();
    println!("| measurement | writers | events/append | appends/s | events/s |");
    println!("|---|---:|---:|---:|---:|");
    for connections in [1, 16] {
        let commits = plain_insert_commit_rate(&database.pool, connections, duration).await?;
        println!(
            "| PostgreSQL single-row INSERT commits | {connections} | 1 | {commits:.0} | {commits:.0} |"
        );
    }
    for writers in [1, 16] {
        for per_append in [1, 10, 100] {
            let store = store.clone();
            let appends = rate(writers, duration, move |_| {
                let store = store.clone();
                async move {
                    let stream_id = format!("account-{}", Uuid::now_v7());
                    store
                        .append(AppendRequest::single(
                            stream_id,
                            ExpectedVersion::NoStream,
                            events(per_append),
                        ))
                        .await?;
                    Ok(1)
                }
            })
            .await?;
            println!(
                "| event store append | {writers} | {per_append} | {appends:.0} | {:.0} |",
                appends * per_append as f64
            );
        }
    }
    // What the command API's group commit does: many independent single-event requests,
    // each with its own expected version, in one transaction.
    for requests_per_batch in [10, 100] {
        let store = store.clone();
        let batches = rate(1, duration, move |_| {
            let store = store.clone();
            async move {
                let requests: Vec<AppendRequest> = (0..requests_per_batch)
                    .map(|_| {
                        AppendRequest::single(
                            format!("account-{}", Uuid::now_v7()),
                            ExpectedVersion::NoStream,
                            events(1),
                        )
                    })
                    .collect();
                store.append_batch(&requests).await?;
                Ok(1)
            }
        })
        .await?;
        println!(
            "| group commit of {requests_per_batch} single-event requests | 1 | 1 | {:.0} | {:.0} |",
            batches * requests_per_batch as f64,
            batches * requests_per_batch as f64
        );
    }
    database.drop_now().await?;
    Ok(())
}
