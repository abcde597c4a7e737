//! Who may call each route of the projector's admin port (API.md, "Security"): one
//! table, read by the `authorize` middleware of `service::auth` on every
//! request and by the test that walks every route with every kind of caller. A route
//! missing here is refused to everyone, so a new admin action stays closed until it is
//! listed.

use axum::http::Method;
use service::auth::{Access, Role};

/// Every admin route besides the operational ones (`OPS_ACCESS`), and the role it needs;
/// `admin` passes every check.
///
/// - `GET /projections` needs `viewer`: it shows the same facts as the query API's
///   `GET /projections` (position, head, lag, state), which is how a reader of the views
///   judges how fresh they are, so it needs the same role; a different one here would
///   let a caller read through one door what the other closes. It is not open like
///   `/metrics`, because a stopped projection's `error` carries internal detail.
/// - `POST /projections/{name}/rebuild` is an admin's alone (API.md): it replaces a read
///   model and costs a full replay of the log.
pub const ACCESS: &[Access] = &[
    Access {
        method: Method::GET,
        path: "/projections",
        role: Some(Role::Viewer),
    },
    Access {
        method: Method::POST,
        path: "/projections/{name}/rebuild",
        role: Some(Role::Admin),
    },
];
