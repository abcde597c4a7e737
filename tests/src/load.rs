//! The load generator's client, shared by every benchmark that drives the whole system
//! over HTTP (`loadgen`, `bench-growth`) and by the peer comparison, so that eventledger
//! and the peer see the same requests from the same code: the scenarios, the visibility
//! lag (once per sample and under paced load), and the rebuild through the admin API.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bench::{LatencyRun, rate_with_latency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Deposits spread uniformly over `--accounts` accounts.
    Deposits,
    /// Transfers between random pairs of `--transfer-accounts` accounts.
    Transfers,
    /// Every deposit to one account.
    Hot,
    /// 80% `GET /accounts/{id}` on the query API, 20% deposits.
    Mixed,
}

impl Scenario {
    pub fn title(self) -> &'static str {
        match self {
            Self::Deposits => "deposits over many accounts",
            Self::Transfers => "transfers among a few accounts",
            Self::Hot => "deposits to one hot account",
            Self::Mixed => "mixed: 80% reads, 20% deposits",
        }
    }
}

/// Money each transfer account starts with: enough that a run of one-cent transfers
/// never runs dry, so every failure counted is a real one.
pub const TRANSFER_SEED_AMOUNT: i64 = 1_000_000_000;

/// Accounts opened at once while setting up: enough to keep the command API's group
/// commit busy without queueing past its bound.
pub const SETUP_CONCURRENCY: usize = 64;

/// Longest a visibility-lag read waits for the projection, in milliseconds (API.md's cap).
pub const LAG_WAIT_MS: u64 = 10_000;

/// Deposits per second offered for the lag under load when the deposit scenario did not
/// run to say what half the top rate is.
pub const DEFAULT_LAG_RATE: f64 = 1_000.0;

/// Commands in flight at most while pacing: more means the system no longer keeps up
/// with the offered rate, and further ticks are counted as missed instead of piling up.
pub const PACED_MAX_IN_FLIGHT: usize = 512;

/// One paced deposit in this many is read back through the query API to time its lag;
/// the rest only load the system, so the reads add a fraction of the load, not double it.
pub const LAG_READ_EVERY: u64 = 4;

/// How often the pacer wakes to send the deposits due since its last wake.
pub const PACER_TICK: Duration = Duration::from_millis(5);

/// Where the system under load answers, and the client every request goes through.
/// Against the peer, which has one service, `command` and `query` are its one URL.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// Base URLs (`http://127.0.0.1:PORT`) of the command API, the query API and the
    /// projector's admin API.
    pub command: String,
    pub query: String,
    pub projector: String,
    /// Sent with every request: every route but the operational ones needs one (the
    /// peer ignores it).
    pub token: String,
}

impl Api {
    /// The client every benchmark uses: a pool of up to `connections` idle connections
    /// per host and a 30 s timeout per request, far above any latency reported.
    pub fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    pub fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    /// POSTs a command; `Ok(Some(answer))` on 2xx, `Ok(None)` on a 4xx/5xx answer.
    pub async fn command(&self, path: &str, body: Value) -> anyhow::Result<Option<Value>> {
        let response = self
            .request(reqwest::Method::POST, format!("{}{path}", self.command))
            .json(&body)
            .send()
            .await?;
        if response.status().is_success() {
            Ok(Some(response.json().await?))
        } else {
            Ok(None)
        }
    }

    pub async fn open_account(&self) -> anyhow::Result<String> {
        let answer = self
            .command(
                "/accounts",
                json!({ "owner": { "name": "Load Generator", "email": "load@example.com" }, "currency": "EUR" }),
            )
            .await?
            .context("opening an account was refused")?;
        Ok(answer["account_id"]
            .as_str()
            .context("answer without account_id")?
            .to_owned())
    }
}

/// A small, fast, deterministic mixer: which account a call touches. Not for security.
pub fn pick(worker: usize, call: u64, modulo: usize) -> usize {
    let mut x =
        (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ call.wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    (x % modulo.max(1) as u64) as usize
}

pub fn progress(message: String, seconds: u64) -> ProgressBar {
    let bar = ProgressBar::new(seconds);
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len}s")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    let ticker = bar.clone();
    tokio::spawn(async move {
        while !ticker.is_finished() && ticker.position() < ticker.length().unwrap_or(0) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ticker.inc(1);
        }
    });
    bar
}

pub async fn open_accounts(api: &Api, count: usize, label: &str) -> anyhow::Result<Arc<Vec<String>>> {
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("opening {label}"));
    let mut ids = Vec::with_capacity(count);
    for chunk_start in (0..count).step_by(SETUP_CONCURRENCY) {
        let chunk = (chunk_start..count.min(chunk_start + SETUP_CONCURRENCY)).map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.open_account().await })
        });
        for task in chunk.collect::<Vec<_>>() {
            ids.push(task.await??);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(Arc::new(ids))
}

/// Runs `scenario` from `connections` closed-loop connections for `seconds`: each sends
/// its next request when the last is answered. A refused request (4xx/5xx) counts as a
/// failure and is not timed; a transport error stops the run.
pub async fn run_scenario(
    api: &Api,
    connections: usize,
    seconds: u64,
    scenario: Scenario,
    accounts: &Arc<Vec<String>>,
    transfer_accounts: &Arc<Vec<String>>,
) -> anyhow::Result<LatencyRun> {
    let bar = progress(scenario.title().to_owned(), seconds);
    let (api, accounts, transfer_accounts) = (api.clone(), accounts.clone(), transfer_accounts.clone());
    let run = rate_with_latency(connections, Duration::from_secs(seconds), move |worker, call| {
        let (api, accounts, transfer_accounts) = (api.clone(), accounts.clone(), transfer_accounts.clone());
        async move {
            let deposit = |account: &str| (format!("/accounts/{account}/deposits"), json!({ "amount": 1 + (call % 100) as i64 }));
            let done = match scenario {
                Scenario::Deposits => {
                    let (path, body) = deposit(&accounts[pick(worker, call, accounts.len())]);
                    api.command(&path, body).await?.is_some()
                }
                Scenario::Hot => {
                    let (path, body) = deposit(&accounts[0]);
                    api.command(&path, body).await?.is_some()
                }
                Scenario::Transfers => {
                    let from = pick(worker, call, transfer_accounts.len());
                    let to = (from + 1 + pick(worker, call ^ 0xABCD, transfer_accounts.len() - 1)) % transfer_accounts.len();
                    let body = json!({ "from_account_id": transfer_accounts[from], "to_account_id": transfer_accounts[to], "amount": 1 });
                    api.command("/transfers", body).await?.is_some()
                }
                Scenario::Mixed => {
                    let account = &accounts[pick(worker, call, accounts.len())];
                    if call % 5 == 0 {
                        let (path, body) = deposit(account);
                        api.command(&path, body).await?.is_some()
                    } else {
                        let url = format!("{}/accounts/{account}", api.query);
                        api.request(reqwest::Method::GET, url).send().await?.status().is_success()
                    }
                }
            };
            Ok(done)
        }
    })
    .await;
    bar.finish_and_clear();
    run
}

/// Write, then read the write back through the query API with `min_position`: the time
/// from the command's answer to the read's answer is the visibility lag.
pub async fn visibility_lag(
    api: &Api,
    accounts: &Arc<Vec<String>>,
    samples: usize,
) -> anyhow::Result<LatencyRun> {
    let bar = ProgressBar::new(samples as u64);
    bar.set_message("visibility lag");
    let mut latency_us = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failures = 0;
    let started = Instant::now();
    for sample in 0..samples {
        let account = &accounts[pick(7, sample as u64, accounts.len())];
        let Some(answer) = api
            .command(&format!("/accounts/{account}/deposits"), json!({ "amount": 1 }))
            .await?
        else {
            failures += 1;
            continue;
        };
        let acknowledged = Instant::now();
        let position = answer["position"].as_i64().context("answer without position")?;
        let url = format!(
            "{}/accounts/{account}?min_position={position}&wait_ms={LAG_WAIT_MS}",
            api.query
        );
        if api
            .request(reqwest::Method::GET, url)
            .send()
            .await?
            .status()
            .is_success()
        {
            latency_us.record((acknowledged.elapsed().as_micros() as u64).max(1))?;
        } else {
            failures += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(LatencyRun {
        per_second: latency_us.len() as f64 / started.elapsed().as_secs_f64(),
        failures,
        latency_us,
    })
}

/// What the paced deposits measured: the commands themselves and their visibility lag.
pub struct LagUnderLoad {
    pub offered_per_second: f64,
    pub commands: LatencyRun,
    pub lag: LatencyRun,
    /// Deposits due that found [`PACED_MAX_IN_FLIGHT`] commands still unanswered and
    /// were not sent.
    pub missed: u64,
}

/// One paced deposit's outcome: the command's latency, and for one in
/// [`LAG_READ_EVERY`] the time from its answer to the query API showing it.
enum PacedOutcome {
    Refused,
    Answered { command_us: u64, read_back: ReadBack },
}

/// Whether a paced deposit was read back through the query API, and what that saw.
enum ReadBack {
    NotAsked,
    /// Readable this many µs after the command's answer.
    Visible {
        lag_us: u64,
    },
    /// Not readable within [`LAG_WAIT_MS`], or the read failed.
    Unseen,
}

/// Offers deposits at `rate` per second over `accounts` for `seconds`, open loop (a slow
/// answer does not slow the offer), and reads one in [`LAG_READ_EVERY`] back through the
/// query API with `min_position`: the lag a client sees while the system is busy.
pub async fn lag_under_load(
    api: &Api,
    accounts: &Arc<Vec<String>>,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<LagUnderLoad> {
    let bar = progress(format!("lag under {rate:.0} deposits/s"), seconds);
    let outcome = lag_until(
        api,
        accounts,
        rate,
        tokio::time::sleep(Duration::from_secs(seconds)),
    )
    .await;
    bar.finish_and_clear();
    outcome
}

/// As [`lag_under_load`], offering until `until` completes: for the lag while something
/// else runs (a rebuild), however long that takes.
pub async fn lag_until(
    api: &Api,
    accounts: &Arc<Vec<String>>,
    rate: f64,
    until: impl Future<Output = ()>,
) -> anyhow::Result<LagUnderLoad> {
    let in_flight = Arc::new(Semaphore::new(PACED_MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut ticks = tokio::time::interval(PACER_TICK);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut missed: u64 = 0;
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => break,
            _ = ticks.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                missed += 1;
                continue;
            };
            let (api, account) = (api.clone(), accounts[pick(11, sent, accounts.len())].clone());
            let reads_back = sent.is_multiple_of(LAG_READ_EVERY);
            tasks.spawn(async move {
                let _permit = permit;
                let asked = Instant::now();
                let answer = api
                    .command(&format!("/accounts/{account}/deposits"), json!({ "amount": 1 }))
                    .await;
                let acknowledged = Instant::now();
                let position = match &answer {
                    Ok(Some(answer)) => answer["position"].as_i64(),
                    _ => None,
                };
                let Some(position) = position else {
                    return PacedOutcome::Refused;
                };
                let command_us = (acknowledged - asked).as_micros() as u64;
                if !reads_back {
                    return PacedOutcome::Answered {
                        command_us,
                        read_back: ReadBack::NotAsked,
                    };
                }
                let url = format!(
                    "{}/accounts/{account}?min_position={position}&wait_ms={LAG_WAIT_MS}",
                    api.query
                );
                let visible = api
                    .request(reqwest::Method::GET, url)
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                let read_back = if visible {
                    ReadBack::Visible {
                        lag_us: acknowledged.elapsed().as_micros() as u64,
                    }
                } else {
                    ReadBack::Unseen
                };
                PacedOutcome::Answered {
                    command_us,
                    read_back,
                }
            });
        }
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    let mut commands = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut lag = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut refused, mut unseen) = (0, 0);
    while let Some(outcome) = tasks.join_next().await {
        match outcome? {
            PacedOutcome::Refused => refused += 1,
            PacedOutcome::Answered {
                command_us,
                read_back,
            } => {
                commands.saturating_record(command_us.max(1));
                match read_back {
                    ReadBack::Visible { lag_us } => lag.saturating_record(lag_us.max(1)),
                    ReadBack::Unseen => unseen += 1,
                    ReadBack::NotAsked => {}
                }
            }
        }
    }
    let answered_seconds = started.elapsed().as_secs_f64();
    Ok(LagUnderLoad {
        offered_per_second: sent as f64 / offered_seconds,
        commands: LatencyRun {
            per_second: commands.len() as f64 / answered_seconds,
            failures: refused,
            latency_us: commands,
        },
        lag: LatencyRun {
            per_second: lag.len() as f64 / answered_seconds,
            failures: unseen,
            latency_us: lag,
        },
        missed,
    })
}

/// Asks the projector to rebuild every projection and waits until each is live again at
/// or past the head it started from; returns (events in the log, seconds for all).
pub async fn rebuild_rate(api: &Api) -> anyhow::Result<(i64, f64)> {
    let projections: Value = api
        .request(reqwest::Method::GET, format!("{}/projections", api.projector))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let items = projections
        .get("items")
        .or(Some(&projections))
        .and_then(Value::as_array)
        .context("GET /projections did not list projections")?
        .clone();
    let head = items
        .iter()
        .filter_map(|item| item["head"].as_i64())
        .max()
        .unwrap_or(0);
    let started = Instant::now();
    for item in &items {
        let name = item["name"].as_str().context("projection without a name")?;
        let response = api
            .request(
                reqwest::Method::POST,
                format!("{}/projections/{name}/rebuild", api.projector),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("rebuild of {name} answered {}", response.status());
        }
    }
    loop {
        let now: Value = api
            .request(reqwest::Method::GET, format!("{}/projections", api.projector))
            .send()
            .await?
            .json()
            .await?;
        let list = now
            .get("items")
            .or(Some(&now))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let done = list
            .iter()
            .all(|item| item["status"] == "live" && item["position"].as_i64().unwrap_or(0) >= head);
        if done {
            break;
        }
        if started.elapsed() > REBUILD_LIMIT {
            bail!("rebuild did not finish within {REBUILD_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((head, started.elapsed().as_secs_f64()))
}

/// The longest [`rebuild_rate`] waits for the projections to be live again: far above
/// what the logs of a benchmark take.
pub const REBUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// One measured row: its Markdown table line (`| name | ops/s | failures | p50 | p99 |
/// p999 | max | share of limit |`) and the same figures as JSON (`per_second`,
/// `failures`, `p50_ms`, `p99_ms`, `p999_ms`, `max_ms`).
pub fn row(name: &str, run: &LatencyRun, limit: Option<(&str, f64)>) -> (String, Value) {
    let share = limit.map_or(String::from("–"), |(label, value)| {
        format!("{:.0}% of {label}", run.per_second / value * 100.0)
    });
    let markdown = format!(
        "| {name} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {share} |",
        run.per_second,
        run.failures,
        run.millis(0.5),
        run.millis(0.99),
        run.millis(0.999),
        run.latency_us.max() as f64 / 1000.0,
    );
    let json = json!({
        "name": name, "per_second": run.per_second, "failures": run.failures,
        "p50_ms": run.millis(0.5), "p99_ms": run.millis(0.99), "p999_ms": run.millis(0.999),
        "max_ms": run.latency_us.max() as f64 / 1000.0,
    });
    (markdown, json)
}
