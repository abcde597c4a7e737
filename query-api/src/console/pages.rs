//! The console's pages: each reads through the query API's own handlers (the same
//! validation, consistency and owner opening as the JSON answers, no HTTP to itself)
//! and renders a template of [`super::render`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Extension, Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::context;
use minijinja::value::Serde;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use service::auth::Role;

use super::chart::{self, BalancePoint};
use super::format::{money, rfc3339, utc};
use super::projector::PROJECTIONS;
use super::render::render;
use super::session::{self, SignedIn};
use crate::consistency::{Consistency, DEFAULT_WAIT};
use crate::error::QueryError;
use crate::params::{Params, PathText};
use crate::projections::ProjectionList;
use crate::{AppState, audit, history, live, projections, views};

/// What a page could not show, as an HTML page with its status.
#[derive(Debug)]
pub struct ConsoleError {
    status: StatusCode,
    message: String,
    signed_in: Option<SignedIn>,
}

impl ConsoleError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            signed_in: None,
        }
    }

    /// The same error, shown with the caller's navigation.
    pub fn with_session(mut self, signed_in: SignedIn) -> Self {
        self.signed_in = Some(signed_in);
        self
    }
}

impl From<QueryError> for ConsoleError {
    fn from(error: QueryError) -> Self {
        let status = error.status();
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %event_store::error_chain(&error), "console page failed");
            "The server could not answer; the failure is logged.".to_owned()
        } else {
            error.to_string()
        };
        Self::new(status, message)
    }
}

impl From<super::render::RenderError> for ConsoleError {
    fn from(error: super::render::RenderError) -> Self {
        tracing::error!(error = %event_store::error_chain(&error), "console page failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The page could not be drawn; the failure is logged.",
        )
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let page = render(
            "error.html",
            context! {
                title => title,
                status => self.status.as_u16(),
                message => self.message,
                nav => Serde(Nav::of(self.signed_in.as_ref())),
            },
        )
        .unwrap_or_else(|_| "The page could not be drawn.".to_owned());
        (self.status, Html(page)).into_response()
    }
}

type PageResult = Result<Response, ConsoleError>;

/// What the navigation shows: only the pages the caller's roles open.
#[derive(Debug, Default, Serialize)]
pub struct Nav {
    signed_in: bool,
    subject: String,
    roles: Vec<&'static str>,
    accounts: bool,
    audit: bool,
    projections: bool,
    admin: bool,
}

impl Nav {
    pub fn of(signed_in: Option<&SignedIn>) -> Self {
        let Some(signed_in) = signed_in else {
            return Self::default();
        };
        Self {
            signed_in: true,
            subject: signed_in.principal.subject.clone(),
            roles: signed_in
                .principal
                .roles
                .iter()
                .map(|role| role.as_str())
                .collect(),
            accounts: signed_in.may(Role::Viewer),
            audit: signed_in.may(Role::Auditor),
            projections: signed_in.may(Role::Viewer),
            admin: signed_in.may(Role::Admin),
        }
    }
}

/// The query string's non-empty values: a form sends every field, empty ones as `x=`,
/// and the API's parameters treat an empty value as given (and malformed).
pub struct Filled(BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Filled {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ConsoleError::new(StatusCode::BAD_REQUEST, rejection.body_text()))?;
        Ok(Self(
            pairs
                .into_iter()
                .map(|(key, value)| (key, value.trim().to_owned()))
                .filter(|(_, value)| !value.is_empty())
                .collect(),
        ))
    }
}

impl Filled {
    /// The values as the API's parameter struct `T` (which ignores keys it does not know).
    fn params<T: DeserializeOwned>(&self) -> Result<Params<T>, ConsoleError> {
        let object = self
            .0
            .iter()
            .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(object))
            .map(Params)
            .map_err(|error| ConsoleError::new(StatusCode::BAD_REQUEST, error.to_string()))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// These values with `key` set to `value` (a next page's link).
    fn with(&self, key: &str, value: String) -> BTreeMap<String, String> {
        let mut next = self.0.clone();
        next.insert(key.to_owned(), value);
        next
    }
}

/// Reads as they are now: the console never waits for a position.
fn now() -> Consistency {
    Consistency {
        min_position: None,
        wait: DEFAULT_WAIT,
    }
}

fn page(template: &'static str, context: minijinja::Value) -> PageResult {
    Ok(Html(render(template, context)?).into_response())
}

/// `GET /console`: the sign-in form, or once signed in, what the caller may open.
pub async fn index(signed_in: Option<Extension<SignedIn>>) -> PageResult {
    let signed_in = signed_in.map(|Extension(signed_in)| signed_in);
    page(
        "index.html",
        context! { nav => Serde(Nav::of(signed_in.as_ref())), error => None::<String> },
    )
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /console/session`: verifies the token of the form and starts a session.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignIn>, FormRejection>,
) -> PageResult {
    let refuse = |status: StatusCode, message: String| -> PageResult {
        let body = render(
            "index.html",
            context! { nav => Serde(Nav::default()), error => Some(message) },
        )?;
        Ok((status, Html(body)).into_response())
    };
    let Ok(Form(SignIn { token })) = form else {
        return refuse(StatusCode::BAD_REQUEST, "Paste a token into the form.".to_owned());
    };
    let token = token.trim();
    if token.is_empty() || token.len() > session::MAX_TOKEN_BYTES {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("A token is 1 to {} bytes.", session::MAX_TOKEN_BYTES),
        );
    }
    match session::verify(&state, token) {
        Ok(_) => Ok((
            [(header::SET_COOKIE, session::start_cookie(token, &headers))],
            Redirect::to("/console"),
        )
            .into_response()),
        Err(error) => refuse(StatusCode::UNAUTHORIZED, format!("Not signed in: {error}.")),
    }
}

/// `POST /console/session/end`: ends the session.
pub async fn sign_out(headers: HeaderMap) -> Response {
    (
        [(header::SET_COOKIE, session::end_cookie(&headers))],
        Redirect::to("/console"),
    )
        .into_response()
}

/// One account in the list.
#[derive(Serialize)]
struct AccountRow {
    id: String,
    owner: Option<String>,
    currency: String,
    balance: String,
    status: String,
    opened_at: String,
    opened_at_rfc3339: String,
}

/// `GET /console/accounts`: the list with the list endpoint's filters and pages; an
/// `id` jumps to that account.
pub async fn accounts(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    filled: Filled,
) -> PageResult {
    let fail = |error: ConsoleError| error.with_session(signed_in.clone());
    if let Some(id) = filled.get("id") {
        let id = uuid::Uuid::parse_str(id).map_err(|_| {
            fail(ConsoleError::new(
                StatusCode::BAD_REQUEST,
                "An account id is a UUID.",
            ))
        })?;
        return Ok(Redirect::to(&format!("/console/accounts/{id}")).into_response());
    }
    let answer = views::accounts::list_accounts(State(state), filled.params().map_err(fail)?, now())
        .await
        .map_err(|error| fail(error.into()))?;
    let list = answer.body.0;
    let rows: Vec<AccountRow> = list
        .items
        .iter()
        .map(|account| AccountRow {
            id: account.account_id.to_string(),
            owner: account.owner.as_ref().map(|owner| owner.name.clone()),
            currency: account.currency.clone(),
            balance: money(account.balance, &account.currency),
            status: account.status.clone(),
            opened_at: utc(account.opened_at),
            opened_at_rfc3339: rfc3339(account.opened_at),
        })
        .collect();
    let next = list.next_cursor.map(|cursor| filled.with("cursor", cursor));
    page(
        "accounts.html",
        context! {
            nav => Serde(Nav::of(Some(&signed_in))),
            accounts => Serde(rows),
            status => filled.get("status").unwrap_or_default(),
            currency => filled.get("currency").unwrap_or_default(),
            limit => filled.get("limit").unwrap_or_default(),
            next => Serde(next),
            position => answer.position,
        },
    )
}

/// One line of a statement.
#[derive(Serialize)]
struct StatementRow {
    position: i64,
    kind: String,
    amount: String,
    balance_after: String,
    reference: Option<String>,
    transfer_id: Option<String>,
    counterparty: Option<String>,
    recorded_at: String,
    recorded_at_rfc3339: String,
}

/// The account as it stood at a position or time, or why it cannot be shown.
#[derive(Serialize)]
struct HistoryBlock {
    at_position: String,
    at_time: String,
    result: Option<HistoryResult>,
    error: Option<String>,
}

#[derive(Serialize)]
struct HistoryResult {
    owner: Option<String>,
    status: String,
    balance: String,
    last_event_position: i64,
}

/// `GET /console/accounts/{id}`: owner, status, balance, the statement (paged) with its
/// chart, and for auditors the account "as it stood at" a position or time.
pub async fn account(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    PathText(id): PathText,
    filled: Filled,
) -> PageResult {
    let fail = |error: ConsoleError| error.with_session(signed_in.clone());
    let account = views::accounts::get_account(State(state.clone()), PathText(id.clone()), now())
        .await
        .map_err(|error| fail(error.into()))?
        .body
        .0;
    let statement = views::transactions::list_transactions(
        State(state.clone()),
        PathText(id.clone()),
        filled.params().map_err(fail)?,
        now(),
    )
    .await
    .map_err(|error| fail(error.into()))?
    .body
    .0;
    let currency = account.currency.clone();
    let points: Vec<BalancePoint> = statement
        .items
        .iter()
        .map(|item| BalancePoint {
            at: item.recorded_at,
            balance: item.balance_after,
        })
        .collect();
    let chart = chart::balance_svg(&points, &currency).map(minijinja::Value::from_safe_string);
    let rows: Vec<StatementRow> = statement
        .items
        .iter()
        .map(|item| {
            let outgoing = matches!(item.kind.as_str(), "withdrawal" | "transfer_out");
            let signed = if outgoing { -item.amount } else { item.amount };
            StatementRow {
                position: item.position,
                kind: item.kind.replace('_', " "),
                amount: money(signed, &currency),
                balance_after: money(item.balance_after, &currency),
                reference: item.reference.clone(),
                transfer_id: item.transfer_id.map(|id| id.to_string()),
                counterparty: item.counterparty_account_id.map(|id| id.to_string()),
                recorded_at: utc(item.recorded_at),
                recorded_at_rfc3339: rfc3339(item.recorded_at),
            }
        })
        .collect();
    let history = if signed_in.may(Role::Auditor) {
        let at_position = filled.get("at_position").unwrap_or_default().to_owned();
        let at_time = filled.get("at_time").unwrap_or_default().to_owned();
        let (result, error) = if at_position.is_empty() && at_time.is_empty() {
            (None, None)
        } else {
            let asked = filled.params().map_err(fail)?;
            match history::account_history(State(state.clone()), PathText(id.clone()), asked, now()).await {
                Ok(answer) => {
                    let then = answer.body.0;
                    (
                        Some(HistoryResult {
                            owner: then.account.owner.map(|owner| owner.name),
                            status: then.account.status,
                            balance: money(then.account.balance, &then.account.currency),
                            last_event_position: then.last_event_position,
                        }),
                        None,
                    )
                }
                Err(error) => (None, Some(ConsoleError::from(error).message)),
            }
        };
        Some(HistoryBlock {
            at_position,
            at_time,
            result,
            error,
        })
    } else {
        None
    };
    let next = statement.next_cursor.map(|cursor| filled.with("cursor", cursor));
    page(
        "account.html",
        context! {
            nav => Serde(Nav::of(Some(&signed_in))),
            id => account.account_id.to_string(),
            owner => account.owner.map(|owner| owner.name),
            status => account.status,
            currency => currency.clone(),
            balance => money(account.balance, &currency),
            available_balance => money(account.available_balance, &currency),
            pending_debits => money(account.pending_debits, &currency),
            pending_credits => money(account.pending_credits, &currency),
            has_pending => account.pending_debits != 0 || account.pending_credits != 0,
            overdraft_limit => money(account.overdraft_limit, &currency),
            version => account.version,
            opened_at => utc(account.opened_at),
            updated_at => utc(account.updated_at),
            statement => Serde(rows),
            chart => chart,
            next => Serde(next),
            history => Serde(history),
        },
    )
}

/// `GET /console/transfers/{id}`: a transfer with both accounts linked.
pub async fn transfer(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    PathText(id): PathText,
) -> PageResult {
    let transfer = views::transfers::get_transfer(State(state), PathText(id), now())
        .await
        .map_err(|error| ConsoleError::from(error).with_session(signed_in.clone()))?
        .body
        .0;
    page(
        "transfer.html",
        context! {
            nav => Serde(Nav::of(Some(&signed_in))),
            id => transfer.transfer_id.to_string(),
            from => transfer.from_account_id.to_string(),
            to => transfer.to_account_id.to_string(),
            amount => money(transfer.amount, &transfer.currency),
            status => transfer.status,
            posted_amount => transfer.posted_amount.map(|posted| money(posted, &transfer.currency)),
            expires_at => transfer.expires_at.map(utc),
            reference => transfer.reference,
            recorded_at => utc(transfer.recorded_at),
            position => transfer.position,
        },
    )
}

/// One envelope of the audit log, as shown.
#[derive(Serialize)]
struct EnvelopeRow {
    position: i64,
    event_type: String,
    stream_id: String,
    stream_version: i64,
    schema_version: i32,
    recorded_at: String,
    recorded_at_rfc3339: String,
    actor: String,
    correlation_id: String,
    causation_id: Option<String>,
    command: String,
    idempotency_key: Option<String>,
    trace: Option<String>,
    /// The event's link in the tamper-evident chain (lowercase hex).
    hash: Option<String>,
    data: String,
}

/// The audit filters of `GET /audit/events`, as the form shows them.
const AUDIT_FILTERS: &[&str] = &[
    "stream_id",
    "event_type",
    "actor",
    "correlation_id",
    "since",
    "until",
    "after",
    "limit",
];

/// `GET /console/audit`: every filter of `GET /audit/events`, each envelope with its
/// metadata, links by correlation id, actor and stream, and the live tail.
pub async fn audit(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    filled: Filled,
) -> PageResult {
    let fail = |error: ConsoleError| error.with_session(signed_in.clone());
    let answer = audit::list_events(State(state), filled.params().map_err(fail)?, now())
        .await
        .map_err(|error| fail(error.into()))?;
    let head = answer.position;
    let log = answer.body.0;
    let rows: Vec<EnvelopeRow> = log
        .items
        .into_iter()
        .map(|event| EnvelopeRow {
            position: event.position,
            event_type: event.event_type,
            stream_id: event.stream_id,
            stream_version: event.stream_version,
            schema_version: event.schema_version,
            recorded_at: utc(event.recorded_at),
            recorded_at_rfc3339: rfc3339(event.recorded_at),
            actor: event.metadata.actor,
            correlation_id: event.metadata.correlation_id,
            causation_id: event.metadata.causation_id,
            command: event.metadata.command,
            idempotency_key: event.metadata.idempotency_key,
            trace: event.metadata.trace,
            hash: event.hash,
            data: serde_json::to_string_pretty(&event.data).unwrap_or_default(),
        })
        .collect();
    let filters: BTreeMap<&str, &str> = AUDIT_FILTERS
        .iter()
        .map(|name| (*name, filled.get(name).unwrap_or_default()))
        .collect();
    let next = log
        .next_after
        .map(|after| filled.with("after", after.to_string()));
    page(
        "audit.html",
        context! {
            nav => Serde(Nav::of(Some(&signed_in))),
            events => Serde(rows),
            filters => Serde(filters),
            next => Serde(next),
            head => head,
        },
    )
}

/// `GET /console/audit/live`: the API's live tail (`GET /audit/events/live`, the same
/// handler, resumable with `Last-Event-ID`) for a signed-in auditor.
pub async fn audit_live(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params<live::LiveParams>,
) -> Response {
    match live::live_events(State(state), headers, params).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// One projection, as shown.
#[derive(Serialize)]
struct ProjectionRow {
    name: String,
    position: i64,
    head: i64,
    lag: i64,
    status: String,
    error: Option<String>,
    updated_at: String,
    /// The projector instance applying it live, if any holds its lease.
    holder: Option<String>,
    rebuildable: bool,
}

/// `GET /console/projections`: position, head, lag and status of each projection,
/// refreshed by the page's script from `/console/projections/status`; for admins a
/// rebuild button.
pub async fn projections(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    filled: Filled,
) -> PageResult {
    let can_rebuild = signed_in.may(Role::Admin) && state.projector.is_some();
    let list = read_projections(&state)
        .await
        .map_err(|error| error.with_session(signed_in.clone()))?;
    let rows: Vec<ProjectionRow> = list
        .items
        .into_iter()
        .map(|item| ProjectionRow {
            rebuildable: can_rebuild && PROJECTIONS.contains(&item.name.as_str()),
            name: item.name,
            position: item.position,
            head: item.head,
            lag: item.lag,
            status: item.status,
            error: item.error,
            updated_at: utc(item.updated_at),
            holder: item.holder,
        })
        .collect();
    let rebuilding = filled
        .get("rebuilding")
        .filter(|name| PROJECTIONS.contains(name))
        .map(str::to_owned);
    page(
        "projections.html",
        context! {
            nav => Serde(Nav::of(Some(&signed_in))),
            projections => Serde(rows),
            rebuilding => rebuilding,
            admin => signed_in.may(Role::Admin),
            auditor => signed_in.may(Role::Auditor),
            projector_configured => state.projector.is_some(),
        },
    )
}

async fn read_projections(state: &AppState) -> Result<ProjectionList, ConsoleError> {
    Ok(projections::list_projections(State(state.clone()), now())
        .await?
        .body
        .0)
}

/// `GET /console/projections/status`: what the projections page refreshes itself with.
pub async fn projections_status(State(state): State<AppState>) -> Result<Json<ProjectionList>, ConsoleError> {
    read_projections(&state).await.map(Json)
}

/// `POST /console/projections/{name}/rebuild`: asks the projector to rebuild, as the
/// signed-in admin, then shows the projections page following its progress.
pub async fn rebuild(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    PathText(name): PathText,
) -> PageResult {
    let fail = |status: StatusCode, message: String| {
        ConsoleError::new(status, message).with_session(signed_in.clone())
    };
    let Some(projection) = PROJECTIONS.iter().find(|known| **known == name) else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "No projection of that name.".to_owned(),
        ));
    };
    let Some(projector) = &state.projector else {
        return Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "The console does not know where the projector is: set PROJECTOR_URL.".to_owned(),
        ));
    };
    match projector.rebuild(projection, &signed_in.token).await {
        Ok(()) => Ok(Redirect::to(&format!("/console/projections?rebuilding={projection}")).into_response()),
        Err(super::projector::RebuildError::Refused { status, detail }) => Err(fail(
            status,
            format!("The projector did not start the rebuild: {detail}"),
        )),
        Err(error) => {
            tracing::warn!(error = %event_store::error_chain(&error), "rebuild not started");
            Err(fail(StatusCode::BAD_GATEWAY, error.to_string()))
        }
    }
}

/// `GET /console/log/verify`: the tamper-evident log's check over a range (API.md,
/// "Tamper-evident log"), run by the same function as `GET /audit/verify`. Reading, not
/// changing anything, so a GET: the form submits the range in the query, and the page
/// with no range shows the form alone. The verdict's `head_hash` is shown for the
/// auditor to keep, which is what catches a rewrite of the whole chain later.
pub async fn verify_log(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    filled: Filled,
) -> PageResult {
    let fail = |error: ConsoleError| error.with_session(signed_in.clone());
    let asked = filled.get("run").is_some();
    let verdict = if asked {
        let answer = crate::verify::verify_chain(State(state), filled.params().map_err(fail)?)
            .await
            .map_err(|error| fail(error.into()))?;
        Some(serde_json::to_value(&answer.0).map_err(|error| {
            fail(ConsoleError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string(),
            ))
        })?)
    } else {
        None
    };
    page(
        "verify.html",
        context! {
            nav => Serde(Nav::of(Some(&signed_in))),
            from => filled.get("from").unwrap_or_default(),
            to => filled.get("to").unwrap_or_default(),
            verdict => verdict.map(Serde),
        },
    )
}

/// Any path under `/console` that is no page: 404 as an HTML page with the console's
/// headers, like every other console answer.
pub async fn not_found(signed_in: Option<Extension<SignedIn>>) -> ConsoleError {
    let error = ConsoleError::new(StatusCode::NOT_FOUND, "There is no console page here.");
    match signed_in {
        Some(Extension(signed_in)) => error.with_session(signed_in),
        None => error,
    }
}
