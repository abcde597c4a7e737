//! Who may call each route of the query API (API.md, "Security"): one table, read by the
//! `authorize` middleware of `service::auth` on every request, by the
//! OpenAPI document (which operations need a bearer token, and which role), and by the
//! test that walks every route with every kind of caller. A route missing here is
//! refused to everyone, so a new query stays closed until it is listed.
//!
//! The web console (`/console/...`) is not in this table: it authenticates by its
//! session cookie, not a bearer header, and has a table of its own with the same roles
//! for the same data ([`crate::console::access::CONSOLE_ACCESS`]), read the same way.

use axum::http::Method;
use service::auth::{Access, Role};

/// Every route the query API serves besides the operational ones (`OPS_ACCESS`), and the
/// role it needs; `admin` passes every check.
///
/// - `viewer`: the read models of accounts, their transactions and transfers, what a
///   branch or a customer-facing system shows.
/// - `auditor`: the audit log, its live tail, the verification of its hash chain, and
///   an account's history folded from its events. These show every actor, correlation id and command of the log, and the
///   past states of an account, which a viewer has no need to see.
/// - `GET /projections` needs `viewer`: it is how a reader of the views sees how fresh
///   they are (each projection's position and lag, against the head its `min_position`
///   waits for), so whoever may read the views may see it. It is not open like
///   `/metrics`, because a stopped projection's `error` carries internal detail (the
///   event and the failure) that an anonymous caller should not read. The projector's
///   admin port serves the same facts under the same role.
pub const ACCESS: &[Access] = &[
    Access {
        method: Method::GET,
        path: "/accounts",
        role: Some(Role::Viewer),
    },
    Access {
        method: Method::GET,
        path: "/accounts/{id}",
        role: Some(Role::Viewer),
    },
    Access {
        method: Method::GET,
        path: "/accounts/{id}/transactions",
        role: Some(Role::Viewer),
    },
    Access {
        method: Method::GET,
        path: "/transfers/{id}",
        role: Some(Role::Viewer),
    },
    Access {
        method: Method::GET,
        path: "/transfers",
        role: Some(Role::Viewer),
    },
    Access {
        method: Method::GET,
        path: "/accounts/{id}/history",
        role: Some(Role::Auditor),
    },
    Access {
        method: Method::GET,
        path: "/audit/events",
        role: Some(Role::Auditor),
    },
    Access {
        method: Method::GET,
        path: "/audit/events/live",
        role: Some(Role::Auditor),
    },
    Access {
        method: Method::GET,
        path: "/audit/streams/{stream_id}",
        role: Some(Role::Auditor),
    },
    Access {
        method: Method::GET,
        path: "/audit/verify",
        role: Some(Role::Auditor),
    },
    Access {
        method: Method::GET,
        path: "/projections",
        role: Some(Role::Viewer),
    },
    // The contract itself is public: clients need it before they hold a token.
    Access {
        method: Method::GET,
        path: "/openapi.json",
        role: None,
    },
];
