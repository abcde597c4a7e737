//! Who may open each console route. The console signs people in with the same bearer
//! tokens and roles as the API (README, "Who may do what"), but carries the token in a
//! session cookie rather than an `Authorization` header, so its routes are checked here,
//! by [`super::session::authorize`], instead of by the API's `authorize` middleware.
//! Like the API's table, a console route missing here is refused to everyone.

use axum::http::Method;
use service::auth::Role;

/// One console route and the role its session needs; `None` is open without a session
/// (the sign-in page and form, the stylesheet and script).
#[derive(Debug, Clone)]
pub struct ConsoleAccess {
    pub method: Method,
    /// As registered in the router (`/console/accounts/{id}`).
    pub path: &'static str,
    pub role: Option<Role>,
}

const fn route(method: Method, path: &'static str, role: Option<Role>) -> ConsoleAccess {
    ConsoleAccess { method, path, role }
}

/// Every console route. The roles are the API's for the same data: account views and
/// transfers need `viewer`, the audit log and its live tail `auditor`, the projections'
/// progress `viewer`, a rebuild `admin` (and the projector checks that role again).
/// An account page shows "as it stood at" only to an `auditor`, as the history
/// endpoint does; the page itself needs `viewer`.
pub const CONSOLE_ACCESS: &[ConsoleAccess] = &[
    route(Method::GET, "/console", None),
    route(Method::POST, "/console/session", None),
    route(Method::POST, "/console/session/end", None),
    route(Method::GET, "/console/assets/{file}", None),
    route(Method::GET, "/console/accounts", Some(Role::Viewer)),
    route(Method::GET, "/console/accounts/{id}", Some(Role::Viewer)),
    route(Method::GET, "/console/transfers/{id}", Some(Role::Viewer)),
    route(Method::GET, "/console/audit", Some(Role::Auditor)),
    route(Method::GET, "/console/audit/live", Some(Role::Auditor)),
    route(Method::GET, "/console/projections", Some(Role::Viewer)),
    route(Method::GET, "/console/projections/status", Some(Role::Viewer)),
    route(
        Method::POST,
        "/console/projections/{name}/rebuild",
        Some(Role::Admin),
    ),
    // As `GET /audit/verify`: the log is an auditor's.
    route(Method::GET, "/console/log/verify", Some(Role::Auditor)),
    // The catch-all of paths no console page has: a 404 page for anyone.
    route(Method::GET, "/console/{*rest}", None),
    route(Method::POST, "/console/{*rest}", None),
];

/// The entry for a request, `HEAD` needing what `GET` needs; `None` if unlisted.
pub fn required(method: &Method, path: &str) -> Option<&'static ConsoleAccess> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    CONSOLE_ACCESS
        .iter()
        .find(|access| access.method == method && access.path == path)
}
