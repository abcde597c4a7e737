//! The console's link to the projector's admin API, for the rebuild button: the query
//! API only reads, so a rebuild is asked of the projector (`POST
//! /projections/{name}/rebuild`, API.md "Projections") with the signed-in caller's own
//! token. The projector checks the `admin` role itself; the console's check only spares
//! a call that would be refused.

use std::time::Duration;

use axum::http::StatusCode;

/// The projections the projector rebuilds (API.md, "Projections").
pub const PROJECTIONS: &[&str] = &["accounts", "account_transactions", "transfers"];

/// How long the call to the projector may take: it only starts the rebuild (202).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the projector's admin API is, and the client that calls it.
#[derive(Clone, Debug)]
pub struct ProjectorLink {
    base_url: String,
    client: reqwest::Client,
}

/// Why a rebuild was not started.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The projector answered with a problem; `detail` is its own explanation.
    #[error("the projector refused ({status}): {detail}")]
    Refused { status: StatusCode, detail: String },
    /// The projector could not be reached.
    #[error("the projector at {url} could not be reached")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ProjectorLink {
    /// The projector's admin API at `base_url` (`http://127.0.0.1:8083`).
    pub fn new(base_url: &str) -> Result<Self, reqwest::Error> {
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?,
        })
    }

    /// Asks the projector to rebuild `projection` (one of [`PROJECTIONS`]) as the
    /// holder of `token`.
    pub async fn rebuild(&self, projection: &str, token: &str) -> Result<(), RebuildError> {
        let url = format!("{}/projections/{projection}/rebuild", self.base_url);
        let response = self
            .client
            .post(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|source| RebuildError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "no detail given".to_owned());
        Err(RebuildError::Refused {
            status: StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            detail,
        })
    }
}
