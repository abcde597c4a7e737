//! A quick load check of the command path: the command API in-process on port 0 over a
//! scratch database, many concurrent deposits and transfers over real HTTP, and the
//! rate and group-commit batch sizes it reached. A smoke figure for development; the
//! benchmark of record lives in the `tests` crate.
//!
//! ```sh
//! cargo run --release -p command-api --example load -- [commands] [concurrency] [accounts]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use command_api::{AppState, app};
use event_store::EventStore;
use event_store::pii::{PiiConfig, Vault};
use futures::StreamExt;
use serde_json::json;
use service::auth::{Authenticator, Role, mint_hs256};
use service::{Readiness, database};

/// A database of its own, so the figures are not mixed with anything else.
const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/eventledger_command_load";

/// The HS256 secret of this in-process run: every request is verified, as in production.
const SECRET: &[u8] = b"command-api-load-check-secret-of-32-bytes";

/// The token outlives any run of this check.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<usize>());
    let commands = args.next().transpose()?.unwrap_or(20_000);
    let concurrency = args.next().transpose()?.unwrap_or(256);
    let account_count = args.next().transpose()?.unwrap_or(1_000).max(2);

    // Installed before the first command, or its measurements are lost.
    let metrics = service::telemetry::metrics_handle();
    let pool = database::connect_and_migrate(DATABASE_URL, 16).await?;
    let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
    let (state, _committer) = AppState::new(
        EventStore::new(pool.clone()),
        Readiness { pool, nats },
        Authenticator::hs256(SECRET),
        // The public development key: this example seals only made-up owners.
        Vault::from_config(&PiiConfig { pii_master_key: None }, true)?,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let token = mint_hs256(SECRET, "load-check", &[Role::Teller], TOKEN_LIFETIME)?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(concurrency)
        .build()?;

    let mut accounts = Vec::with_capacity(account_count);
    for _ in 0..account_count {
        let answer: serde_json::Value = client
            .post(format!("{base}/accounts"))
            .json(&json!({"owner": {"name": "Load", "email": "load@example.com"}, "currency": "EUR", "overdraft_limit": 1_000_000}))
            .send()
            .await?
            .json()
            .await?;
        accounts.push(answer["account_id"].as_str().unwrap_or_default().to_owned());
    }
    let accounts = Arc::new(accounts);
    let failures = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    futures::stream::iter(0..commands)
        .for_each_concurrent(concurrency, |index| {
            let client = client.clone();
            let base = base.clone();
            let accounts = accounts.clone();
            let failures = failures.clone();
            async move {
                let from = &accounts[index % accounts.len()];
                let request = if index % 2 == 0 {
                    client
                        .post(format!("{base}/accounts/{from}/deposits"))
                        .json(&json!({"amount": 100}))
                } else {
                    let to = &accounts[(index * 7 + 3) % accounts.len()];
                    let to = if to == from {
                        &accounts[(index + 1) % accounts.len()]
                    } else {
                        to
                    };
                    client
                        .post(format!("{base}/transfers"))
                        .json(&json!({"from_account_id": from, "to_account_id": to, "amount": 10}))
                };
                let ok = request
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    let elapsed = started.elapsed();
    println!(
        "{commands} commands ({} failed) at concurrency {concurrency} over {account_count} accounts in {:.2} s: {:.0} commands/s",
        failures.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        commands as f64 / elapsed.as_secs_f64()
    );
    let rendered = metrics.render();
    for line in rendered
        .lines()
        .filter(|line| line.starts_with("command_api_batch_commands"))
    {
        println!("{line}");
    }
    Ok(())
}
