//! `verify-log`: the check of `GET /audit/verify` from the command line, against any
//! database URL (the live database, a replica, a restored backup), without the HTTP
//! server and without changing anything: it reads in one read-only transaction and
//! runs no migration.
//!
//! Prints the verdict as the endpoint's JSON on stdout and exits 0 when the range
//! verifies (and, with `--expect-head-hash`, ends in the hash the auditor kept), 1 when
//! it does not, 2 when it could not be checked (no connection, no chain table, a range
//! outside the log).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use event_store::chain::{self, ChainError, Verdict};
use sqlx::postgres::PgPoolOptions;

/// Verifies eventledger's tamper-evident hash chain over a range of the log.
#[derive(Debug, Parser)]
#[command(name = "verify-log", version)]
struct Args {
    /// PostgreSQL URL of the database to verify; only read.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,

    /// First position to verify; the chain starts from the stored hash before it.
    #[arg(long, default_value_t = 1)]
    from: i64,

    /// Last position to verify (default: the head of the log).
    #[arg(long)]
    to: Option<i64>,

    /// The `head_hash` an auditor kept for position `--to` from an earlier
    /// verification: fail unless the chain still ends in it. This is what catches a
    /// rewrite of the whole chain from some position on (README, "Threat model").
    #[arg(long, requires = "to", value_parser = parse_hash)]
    expect_head_hash: Option<String>,
}

/// A kept `head_hash`: 64 hexadecimal digits, either case (read as lowercase). Anything
/// else is a usage error (exit 2), not a chain that fails to match.
fn parse_hash(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.len() == 64 && value.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err("must be a SHA-256 hash: 64 hexadecimal digits".to_owned())
    }
}

/// How long to wait for the database before giving up (exit 2): a verification is run
/// by hand or by a scheduler, which should hear of an unreachable database at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(code) => code,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "verify-log: {}",
                event_store::error_chain(&error)
            );
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<ExitCode, ChainError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect(&args.database_url)
        .await?;
    let verdict = chain::verify(&pool, args.from, args.to).await?;
    let mut out = serde_json::to_value(&verdict).map_err(ChainError::from)?;
    let mut ok = verdict.is_ok();
    if let (Verdict::Verified { head_hash, .. }, Some(expected)) = (&verdict, &args.expect_head_hash)
        && head_hash != expected
    {
        ok = false;
        out["ok"] = false.into();
        out["expected_head_hash"] = expected.clone().into();
        out["reason"] = "the chain verifies, but ends in another hash than the one kept: it was \
                         rewritten at or before `to`"
            .into();
    }
    let _ = writeln!(std::io::stdout(), "{out}");
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
