//! `mint-token`: mints an HS256 bearer token for development and tests, signed with
//! `AUTH_JWT_SECRET` or, with `--development`, with the public development secret that
//! `--insecure-development-auth` accepts. Prints the token alone on stdout.
//!
//! `cargo run --bin mint-token -- --development --subject alice --role teller`

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use service::auth::{self, Role};

#[derive(Parser)]
#[command(
    name = "mint-token",
    about = "Mint a bearer token for eventledger (development and tests)"
)]
struct Args {
    /// The token's `sub`: recorded as the actor of every event it causes.
    #[arg(long, default_value = "developer")]
    subject: String,
    /// A role to grant; repeat for several. Defaults to admin.
    #[arg(long = "role", value_parser = parse_role)]
    roles: Vec<Role>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    ttl_seconds: u64,
    /// Sign with the public development secret instead of AUTH_JWT_SECRET.
    #[arg(long)]
    development: bool,
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    auth_jwt_secret: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("unknown role `{text}`: teller, viewer, auditor or admin"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let secret = match (args.development, &args.auth_jwt_secret) {
        (true, _) => auth::DEVELOPMENT_SECRET.to_owned(),
        (false, Some(secret)) => secret.clone(),
        (false, None) => {
            eprintln!("mint-token: set AUTH_JWT_SECRET or pass --development");
            return ExitCode::from(2);
        }
    };
    let roles = if args.roles.is_empty() {
        vec![Role::Admin]
    } else {
        args.roles
    };
    match auth::mint_hs256(
        secret.as_bytes(),
        &args.subject,
        &roles,
        Duration::from_secs(args.ttl_seconds),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("mint-token: {error}");
            ExitCode::FAILURE
        }
    }
}
