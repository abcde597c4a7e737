//! The web console over real HTTP (issue 17): sign-in with a bearer token into an
//! `HttpOnly`, `SameSite=Strict` cookie, CSRF refusal, the security headers on every
//! answer, each role seeing only its pages, markup from users escaped, decimal amounts,
//! and the assets. The same flows in a real browser are in `tests/tests/console.rs`.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use service::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{AccountFixture, TestApp, spawn_app, token};

/// The markup an owner's name carries in the escaping test.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";

/// A client that keeps no cookies and follows no redirects, so each answer is seen as
/// it is sent.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Posts the sign-in form with `token` from the console's own origin.
async fn post_sign_in(app: &TestApp, token: &str, origin: Option<&str>) -> reqwest::Response {
    let mut request = browser()
        .post(format!("{}/console/session", app.address))
        .form(&[("token", token)]);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.expect("sign-in sent")
}

/// Signs in with a token of `roles` and answers the `Cookie` header to send.
async fn session(app: &TestApp, roles: &[Role]) -> String {
    let response = post_sign_in(app, &token("console-user", roles), Some(&app.address)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response.headers()[SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_owned();
    set_cookie.split(';').next().expect("name=value").to_owned()
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = browser().get(format!("{}{path}", app.address));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.expect("GET sent")
}

fn assert_security_headers(headers: &HeaderMap, what: &str) {
    let csp = headers
        .get("content-security-policy")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"));
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "same-origin", "{what}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
}

/// An account with a statement of two movements, whose owner's name carries markup.
async fn hostile_account(app: &TestApp) -> Uuid {
    let mut fixture = AccountFixture::new("EUR", "open");
    fixture.owner = Some((HOSTILE_NAME.to_owned(), "x@example.com".to_owned()));
    app.insert_account(&fixture).await;
    app.insert_transaction(fixture.account_id, 1, "deposit", 2000, 2000)
        .await;
    app.insert_transaction(fixture.account_id, 2, "withdrawal", 750, 1250)
        .await;
    app.set_checkpoint("accounts", 2).await;
    app.set_checkpoint("account_transactions", 2).await;
    fixture.account_id
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn signing_in_sets_an_http_only_strict_cookie_and_a_bad_token_sets_none(pool: PgPool) {
    let app = spawn_app(pool).await;
    let response = post_sign_in(&app, &token("ada", &[Role::Viewer]), Some(&app.address)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/console");
    assert_security_headers(response.headers(), "sign-in");
    let cookie = response.headers()[SET_COOKIE].to_str().expect("cookie");
    assert!(cookie.starts_with("eventledger_console="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/console"), "{cookie}");
    // Plain HTTP on 127.0.0.1: a browser would drop a `Secure` cookie here.
    assert!(!cookie.contains("Secure"), "{cookie}");

    let refused = post_sign_in(&app, "not-a-token", Some(&app.address)).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    let page = refused.text().await.expect("page");
    assert!(page.contains("sign-in-error"), "{page}");
    assert!(!page.contains("not-a-token"), "the token is echoed: {page}");

    // Behind a TLS-terminating proxy the cookie is `Secure`.
    let behind_tls = browser()
        .post(format!("{}/console/session", app.address))
        .header("origin", &app.address)
        .header("x-forwarded-proto", "https")
        .form(&[("token", token("ada", &[Role::Viewer]))])
        .send()
        .await
        .expect("sign-in sent");
    let cookie = behind_tls.headers()[SET_COOKIE].to_str().expect("cookie");
    assert!(cookie.contains("Secure"), "{cookie}");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_post_from_another_origin_or_from_nowhere_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let admin = token("ada", &[Role::Admin]);
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let response = post_sign_in(&app, &admin, origin).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin:?}");
        assert!(response.headers().get(SET_COOKIE).is_none(), "{origin:?}");
    }
    // A rebuild with a valid session but from another site is refused before it runs.
    let cookie = session(&app, &[Role::Admin]).await;
    let response = browser()
        .post(format!("{}/console/projections/accounts/rebuild", app.address))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("POST sent");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn every_console_answer_carries_the_security_headers(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = hostile_account(&app).await;
    let admin = session(&app, &[Role::Admin]).await;
    let pages = [
        "/console".to_owned(),
        "/console/accounts".to_owned(),
        format!("/console/accounts/{account}"),
        format!("/console/accounts/{account}?at_position=1"),
        "/console/audit".to_owned(),
        "/console/projections".to_owned(),
        "/console/projections/status".to_owned(),
        "/console/log/verify".to_owned(),
        "/console/log/verify?run=1&from=1".to_owned(),
    ];
    for path in &pages {
        let response = get(&app, path, Some(&admin)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_security_headers(response.headers(), path);
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
    }
    // Signed out, errors and redirects too.
    for (path, status) in [
        ("/console", StatusCode::OK),
        ("/console/accounts", StatusCode::SEE_OTHER),
        (
            &format!("/console/transfers/{}", Uuid::now_v7())[..],
            StatusCode::SEE_OTHER,
        ),
    ] {
        let response = get(&app, path, None).await;
        assert_eq!(response.status(), status, "{path}");
        assert_security_headers(response.headers(), path);
    }
    let missing = get(
        &app,
        &format!("/console/transfers/{}", Uuid::now_v7()),
        Some(&admin),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_security_headers(missing.headers(), "a missing transfer");
    for path in ["/console/nope", "/console/accounts/x/y"] {
        let unknown = get(&app, path, Some(&admin)).await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND, "{path}");
        assert_security_headers(unknown.headers(), path);
        assert!(
            unknown.headers()["content-type"]
                .to_str()
                .is_ok_and(|value| value.starts_with("text/html")),
            "{path}: an HTML page"
        );
    }
    let malformed = get(&app, "/console/accounts?currency=euro", Some(&admin)).await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_security_headers(malformed.headers(), "a malformed filter");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn each_role_opens_only_the_pages_the_readme_gives_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = hostile_account(&app).await;
    let viewer = session(&app, &[Role::Viewer]).await;
    let auditor = session(&app, &[Role::Auditor]).await;
    let teller = session(&app, &[Role::Teller]).await;
    let account_page = format!("/console/accounts/{account}");
    let expectations: [(&str, &str, StatusCode); 12] = [
        (&viewer, "/console/accounts", StatusCode::OK),
        (&viewer, &account_page, StatusCode::OK),
        (&viewer, "/console/audit", StatusCode::FORBIDDEN),
        (&viewer, "/console/projections", StatusCode::OK),
        (&auditor, "/console/accounts", StatusCode::FORBIDDEN),
        (&auditor, "/console/audit", StatusCode::OK),
        (&auditor, "/console/projections", StatusCode::FORBIDDEN),
        (&teller, "/console/accounts", StatusCode::FORBIDDEN),
        (&teller, "/console/audit", StatusCode::FORBIDDEN),
        (&viewer, "/console/log/verify", StatusCode::FORBIDDEN),
        (&auditor, "/console/log/verify", StatusCode::OK),
        (&teller, "/console/log/verify", StatusCode::FORBIDDEN),
    ];
    for (cookie, path, status) in expectations {
        assert_eq!(get(&app, path, Some(cookie)).await.status(), status, "{path}");
    }
    // The navigation offers only what the role opens.
    let viewer_home = get(&app, "/console", Some(&viewer))
        .await
        .text()
        .await
        .expect("page");
    assert!(viewer_home.contains("nav-accounts") && !viewer_home.contains("nav-audit"));
    let auditor_home = get(&app, "/console", Some(&auditor))
        .await
        .text()
        .await
        .expect("page");
    assert!(auditor_home.contains("nav-audit") && !auditor_home.contains("nav-accounts"));
    // A viewer's account page has no "as it stood at" (history needs `auditor`), an
    // admin's has.
    let viewer_account = get(&app, &account_page, Some(&viewer))
        .await
        .text()
        .await
        .expect("page");
    assert!(!viewer_account.contains("at_position"));
    let admin = session(&app, &[Role::Admin]).await;
    let admin_account = get(&app, &account_page, Some(&admin))
        .await
        .text()
        .await
        .expect("page");
    assert!(admin_account.contains("at_position"));
    // A forged or expired cookie is no session.
    let forged = get(
        &app,
        "/console/accounts",
        Some("eventledger_console=forged.token.here"),
    )
    .await;
    assert_eq!(forged.status(), StatusCode::SEE_OTHER);
    // Signing out clears the cookie.
    let out = browser()
        .post(format!("{}/console/session/end", app.address))
        .header("cookie", &viewer)
        .header("origin", &app.address)
        .send()
        .await
        .expect("sign-out sent");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let cleared = out.headers()[SET_COOKIE].to_str().expect("cookie");
    assert!(cleared.starts_with("eventledger_console=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn markup_in_an_owner_name_is_shown_as_text_and_amounts_as_decimals(pool: PgPool) {
    let app = spawn_app(pool).await;
    let account = hostile_account(&app).await;
    let viewer = session(&app, &[Role::Viewer]).await;
    for path in [
        "/console/accounts".to_owned(),
        format!("/console/accounts/{account}"),
    ] {
        let page = get(&app, &path, Some(&viewer)).await.text().await.expect("page");
        assert!(
            page.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{path}: {page}"
        );
        assert!(!page.contains("<img"), "{path}: markup got through");
    }
    let page = get(&app, &format!("/console/accounts/{account}"), Some(&viewer))
        .await
        .text()
        .await
        .expect("page");
    assert!(page.contains("12.50 EUR"), "{page}");
    assert!(page.contains("-7.50 EUR"), "the withdrawal: {page}");
    assert!(page.contains("<svg class=\"chart\""), "{page}");
    assert!(page.contains("UTC (+00:00)"), "{page}");
    assert!(!page.contains("style="), "an inline style would break the CSP");
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn assets_are_compiled_in_and_cached_for_long(pool: PgPool) {
    let app = spawn_app(pool).await;
    let home = get(&app, "/console", None).await.text().await.expect("page");
    for (name, content_type) in [("console.css", "text/css"), ("console.js", "text/javascript")] {
        let start = home.find(&format!("/console/assets/{name}?v=")).expect("linked");
        let url: String = home[start..].chars().take_while(|c| *c != '"').collect();
        let response = get(&app, &url, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let headers = response.headers();
        assert!(
            headers["content-type"]
                .to_str()
                .expect("type")
                .starts_with(content_type)
        );
        assert!(
            headers["cache-control"]
                .to_str()
                .expect("cache")
                .contains("max-age=31536000")
        );
        assert_security_headers(headers, &url);
    }
    assert_eq!(
        get(&app, "/console/assets/nothing.js", None).await.status(),
        StatusCode::NOT_FOUND
    );
    // No inline script anywhere: every <script> names a source.
    assert!(!home.contains("<script>"));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_rebuild_without_a_projector_configured_says_so(pool: PgPool) {
    let app = spawn_app(pool).await;
    let admin = session(&app, &[Role::Admin]).await;
    let response = browser()
        .post(format!("{}/console/projections/accounts/rebuild", app.address))
        .header("cookie", &admin)
        .header("origin", &app.address)
        .send()
        .await
        .expect("POST sent");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = response.text().await.expect("page");
    assert!(page.contains("PROJECTOR_URL"), "{page}");
    let viewer = session(&app, &[Role::Viewer]).await;
    let refused = browser()
        .post(format!("{}/console/projections/accounts/rebuild", app.address))
        .header("cookie", &viewer)
        .header("origin", &app.address)
        .send()
        .await
        .expect("POST sent");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn verifying_the_log_shows_the_head_hash_or_the_first_position_that_was_changed(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let account = domain::AccountId::from(Uuid::now_v7());
    app.append(
        account,
        event_store::ExpectedVersion::NoStream,
        vec![
            crate::helpers::opened(account),
            crate::helpers::deposited(account, 10),
            crate::helpers::deposited(account, 20),
        ],
        "alice",
        "c-1",
    )
    .await;
    let auditor = session(&app, &[Role::Auditor]).await;
    let form = get(&app, "/console/log/verify", Some(&auditor))
        .await
        .text()
        .await
        .expect("page");
    assert!(
        form.contains("id=\"verify-run\"") && !form.contains("id=\"verdict\""),
        "{form}"
    );

    let verified = get(&app, "/console/log/verify?run=1", Some(&auditor))
        .await
        .text()
        .await
        .expect("page");
    let api: serde_json::Value = app.get_json("/audit/verify", 200).await;
    let head_hash = api["head_hash"].as_str().expect("head_hash");
    assert!(verified.contains("Verified"), "{verified}");
    assert!(verified.contains(head_hash), "the page shows the API's head hash");

    // An operator with the owner's rights changes position 2 behind the triggers' back.
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *transaction)
        .await
        .expect("triggers off");
    sqlx::query("UPDATE events SET data = jsonb_set(data, '{amount}', '1000') WHERE position = 2")
        .execute(&mut *transaction)
        .await
        .expect("tamper");
    transaction.commit().await.expect("commit");
    let caught = get(&app, "/console/log/verify?run=1&from=1&to=3", Some(&auditor))
        .await
        .text()
        .await
        .expect("page");
    assert!(caught.contains("Does not verify"), "{caught}");
    assert!(caught.contains("position 2"), "{caught}");
    // A malformed range is refused as the API refuses it, on a console page.
    let malformed = get(&app, "/console/log/verify?run=1&from=x", Some(&auditor)).await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}
