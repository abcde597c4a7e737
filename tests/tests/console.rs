//! The web console in a real browser (issue 17): headless Chromium driven over WebDriver
//! (chromedriver, with fantoccini) against the real processes. Signs in as each role
//! and sees only what it may; opens an account and reads its statement; sees a new
//! deposit appear in the audit log's live tail within a second; an owner name carrying
//! markup renders as text and runs no script; every page answers with the CSP; the
//! pages fit a phone's width and label every field; a rebuild is started from the
//! projections page. Screenshots of each page go to `.local/screenshots/` (ignored by
//! git). Needs `chromium` and `chromium-driver` (scripts/test.sh installs them).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use service::auth::Role;
use tests::harness::{Binary, System};
use tokio::process::{Child, Command};

/// The owner name that must show as text: if it were markup, its `onerror` would run.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";

/// The browser's binary, as Debian's `chromium` package installs it.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long an element may take to appear after a navigation on a loaded machine.
const ELEMENT_WAIT: Duration = Duration::from_secs(10);

/// The bound for a new event to show in the live tail.
const LIVE_TAIL_BOUND: Duration = Duration::from_secs(1);

/// A chromedriver on a free port, killed when dropped.
struct Chromedriver {
    url: String,
    _child: Child,
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (install chromium-driver; scripts/test.sh does)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = reqwest::get(format!("{url}/status"))
                .await
                .ok()
                .filter(|response| response.status().is_success());
            if ready.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer on {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Chromedriver { url, _child: child }
    }

    /// A headless browser session at `width` × `height`.
    async fn browser(&self, width: u32, height: u32) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", format!("--window-size={width},{height}"),
                ],
            }),
        );
        // An alert left open is reported, not dismissed, so an injected script shows.
        capabilities.insert("unhandledPromptBehavior".to_owned(), json!("ignore"));
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

/// Where screenshots go: `.local/screenshots/` at the workspace root.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("screenshot written");
}

/// The page's source, for failure messages.
async fn source(browser: &Client) -> String {
    browser.source().await.unwrap_or_default()
}

async fn visible_text(browser: &Client, id: &str) -> String {
    let element = browser
        .wait()
        .at_most(ELEMENT_WAIT)
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("#{id} not on the page ({error})"));
    element.text().await.expect("text")
}

async fn exists(browser: &Client, css: &str) -> bool {
    !browser
        .find_all(Locator::Css(css))
        .await
        .expect("find")
        .is_empty()
}

/// Signs in through the form, as a person would, and checks the page says who.
async fn sign_in(browser: &Client, base: &str, subject: &str, roles: &[Role]) {
    browser
        .goto(&format!("{base}/console"))
        .await
        .expect("sign-in page");
    let token = System::token(subject, roles).expect("token");
    let field = browser
        .wait()
        .at_most(ELEMENT_WAIT)
        .for_element(Locator::Id("token"))
        .await
        .expect("token field");
    field.send_keys(&token).await.expect("token typed");
    browser
        .find(Locator::Id("sign-in-submit"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("submitted");
    let who = browser
        .wait()
        .at_most(ELEMENT_WAIT)
        .for_element(Locator::Id("who-subject"))
        .await;
    let Ok(who) = who else {
        panic!(
            "not signed in as {subject}; the page was:\n{}",
            source(browser).await
        );
    };
    assert_eq!(who.text().await.expect("subject"), subject);
    let url = browser.current_url().await.expect("url");
    assert!(!url.as_str().contains(&token), "the token is in the URL");
}

async fn sign_out(browser: &Client) {
    browser
        .find(Locator::Id("sign-out"))
        .await
        .expect("sign-out button")
        .click()
        .await
        .expect("signed out");
    browser
        .wait()
        .at_most(ELEMENT_WAIT)
        .for_element(Locator::Id("token"))
        .await
        .expect("back at the sign-in form");
}

/// No alert is open: a script injected through data would have opened one.
async fn assert_no_alert(browser: &Client, what: &str) {
    if let Ok(text) = browser.get_alert_text().await {
        panic!("{what}: an alert is open ({text}): injected script ran");
    }
}

/// The page fits the window's width (no sideways scrolling of the whole page) and every
/// form field has a label.
async fn assert_usable(browser: &Client, what: &str) {
    let fits = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(fits, Value::Bool(true), "{what} is wider than the window");
    let labelled = browser
        .execute(
            "return Array.from(document.querySelectorAll('input, select'))\
             .filter((field) => field.type !== 'hidden' && field.labels.length === 0)\
             .map((field) => field.name);",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(labelled, json!([]), "{what} has unlabelled fields");
}

struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new() -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            token: System::token("console-teller", &[Role::Admin]).expect("token"),
        }
    }

    async fn post(&self, url: &str, body: Value) -> Value {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {url}: {status} {answer}");
        answer
    }
}

#[tokio::test]
async fn the_console_in_a_real_browser_shows_each_role_its_pages_safely_and_live() {
    let mut system = System::start(&[Binary::CommandApi, Binary::Projector])
        .await
        .expect("system");
    let projector_url = system.url(Binary::Projector, "");
    system
        .add_configured(
            Binary::QueryApi,
            &[("PROJECTOR_URL", projector_url.as_str())],
            None,
        )
        .await
        .expect("query-api");
    let base = system.url(Binary::QueryApi, "");
    let api = Api::new();

    // An account whose owner's name is markup, with a deposit and a withdrawal.
    let opened = api
        .post(
            &system.url(Binary::CommandApi, "/accounts"),
            json!({ "owner": { "name": HOSTILE_NAME, "email": "mallory@example.com" }, "currency": "EUR" }),
        )
        .await;
    let account = opened["account_id"].as_str().expect("account_id").to_owned();
    let deposits = system.url(Binary::CommandApi, &format!("/accounts/{account}/deposits"));
    api.post(
        &deposits,
        json!({ "amount": 2000, "reference": "salary <b>bold</b>" }),
    )
    .await;
    let withdrawn = api
        .post(
            &system.url(Binary::CommandApi, &format!("/accounts/{account}/withdrawals")),
            json!({ "amount": 750 }),
        )
        .await;
    // Wait until the read models hold it, so the pages show it.
    let position = withdrawn["position"].as_i64().expect("position");
    let projected = api
        .http
        .get(system.url(
            Binary::QueryApi,
            &format!("/accounts/{account}/transactions?min_position={position}&wait_ms=10000"),
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(projected.status(), 200);

    let driver = Chromedriver::start().await;
    let browser = driver.browser(1280, 900).await;

    // Each role sees only its pages.
    let roles: [(&str, &[Role], [bool; 3]); 4] = [
        ("console-viewer", &[Role::Viewer], [true, false, true]),
        ("console-auditor", &[Role::Auditor], [false, true, false]),
        ("console-teller", &[Role::Teller], [false, false, false]),
        ("console-admin", &[Role::Admin], [true, true, true]),
    ];
    for (subject, held, [accounts, audit, projections]) in roles {
        sign_in(&browser, &base, subject, held).await;
        assert_eq!(exists(&browser, "#nav-accounts").await, accounts, "{subject}");
        assert_eq!(exists(&browser, "#nav-audit").await, audit, "{subject}");
        assert_eq!(
            exists(&browser, "#nav-projections").await,
            projections,
            "{subject}"
        );
        screenshot(&browser, &format!("overview-{subject}")).await;
        // A page the role may not open is refused, not shown.
        if !audit {
            browser
                .goto(&format!("{base}/console/audit"))
                .await
                .expect("audit");
            let message = visible_text(&browser, "error-message").await;
            assert!(message.contains("auditor"), "{subject}: {message}");
        }
        if !accounts {
            browser
                .goto(&format!("{base}/console/accounts"))
                .await
                .expect("accounts");
            let message = visible_text(&browser, "error-message").await;
            assert!(message.contains("viewer"), "{subject}: {message}");
            browser.goto(&format!("{base}/console")).await.expect("home");
        }
        sign_out(&browser).await;
    }

    sign_in(&browser, &base, "console-admin", &[Role::Admin]).await;
    assert_usable(&browser, "overview").await;

    // The accounts list: the markup is text, no image, no script.
    browser
        .goto(&format!("{base}/console/accounts"))
        .await
        .expect("accounts");
    let table = visible_text(&browser, "accounts").await;
    assert!(table.contains(HOSTILE_NAME), "{table}");
    assert!(
        !exists(&browser, "#accounts img").await,
        "the name became an image"
    );
    assert_no_alert(&browser, "accounts").await;
    assert_usable(&browser, "accounts").await;
    screenshot(&browser, "accounts").await;

    // The account: owner as text, balance, statement, chart; "as it stood at".
    browser
        .find(Locator::Css(&format!("a[href='/console/accounts/{account}']")))
        .await
        .expect("link to the account")
        .click()
        .await
        .expect("account opened");
    assert_eq!(visible_text(&browser, "owner").await, HOSTILE_NAME);
    assert_eq!(visible_text(&browser, "balance").await, "12.50 EUR");
    let statement = visible_text(&browser, "statement").await;
    assert!(statement.contains("-7.50 EUR"), "{statement}");
    assert!(statement.contains("20.00 EUR"), "{statement}");
    assert!(statement.contains("salary <b>bold</b>"), "{statement}");
    assert!(exists(&browser, "svg.chart path.chart-line").await);
    assert_no_alert(&browser, "account").await;
    assert_usable(&browser, "account").await;
    screenshot(&browser, "account").await;
    let at_position = browser
        .find(Locator::Id("at_position"))
        .await
        .expect("history field");
    at_position
        .send_keys(&(position - 1).to_string())
        .await
        .expect("typed");
    at_position.send_keys("\u{E007}").await.expect("enter");
    assert_eq!(visible_text(&browser, "history-balance").await, "20.00 EUR");
    screenshot(&browser, "account-history").await;

    // The same page at a phone's width.
    let phone = driver.browser(390, 844).await;
    sign_in(&phone, &base, "console-admin", &[Role::Admin]).await;
    phone
        .goto(&format!("{base}/console/accounts/{account}"))
        .await
        .expect("account");
    assert_eq!(visible_text(&phone, "balance").await, "12.50 EUR");
    assert_usable(&phone, "account at phone width").await;
    screenshot(&phone, "account-phone").await;
    phone.close().await.expect("phone closed");

    // The audit log, and a new deposit in its live tail within a second.
    browser
        .goto(&format!("{base}/console/audit"))
        .await
        .expect("audit");
    let state = browser.find(Locator::Id("live-state")).await.expect("live state");
    let deadline = Instant::now() + ELEMENT_WAIT;
    while state.text().await.expect("state") != "live" {
        assert!(Instant::now() < deadline, "the live tail did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = visible_text(&browser, "events").await;
    assert!(events.contains("AccountOpened"), "{events}");
    assert!(events.contains("console-teller"), "{events}");
    assert_usable(&browser, "audit").await;
    screenshot(&browser, "audit").await;
    let deposited = api.post(&deposits, json!({ "amount": 99 })).await;
    let committed = Instant::now();
    let deposit_position = deposited["position"].as_i64().expect("position").to_string();
    let selector = format!("#live-events li[data-position='{deposit_position}']");
    loop {
        if exists(&browser, &selector).await {
            break;
        }
        assert!(
            committed.elapsed() < LIVE_TAIL_BOUND,
            "the deposit at position {deposit_position} did not show within {LIVE_TAIL_BOUND:?}:\n{}",
            source(&browser).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shown_after = committed.elapsed();
    let line = browser
        .find(Locator::Css(&selector))
        .await
        .expect("live line")
        .text()
        .await
        .expect("text");
    assert!(line.contains("FundsDeposited"), "{line}");
    eprintln!("live tail: the deposit showed {shown_after:?} after its command answered");
    screenshot(&browser, "audit-live").await;
    // Following a correlation link filters the log by it.
    browser
        .find(Locator::Css("#events a.correlation"))
        .await
        .expect("correlation link")
        .click()
        .await
        .expect("followed");
    let filtered = browser
        .find(Locator::Id("f-correlation_id"))
        .await
        .expect("filter field")
        .prop("value")
        .await
        .expect("value");
    assert!(filtered.is_some_and(|value| !value.is_empty()));

    // A transfer's page links both accounts.
    let other = api
        .post(
            &system.url(Binary::CommandApi, "/accounts"),
            json!({ "owner": { "name": "Grace", "email": "grace@example.com" }, "currency": "EUR" }),
        )
        .await;
    let other_id = other["account_id"].as_str().expect("account_id").to_owned();
    let transfer = api
        .post(
            &system.url(Binary::CommandApi, "/transfers"),
            json!({ "from_account_id": account, "to_account_id": other_id, "amount": 100 }),
        )
        .await;
    let transfer_id = transfer["transfer_id"].as_str().expect("transfer_id");
    let transfer_position = transfer["position"].as_i64().expect("position");
    let deadline = Instant::now() + ELEMENT_WAIT;
    loop {
        browser
            .goto(&format!("{base}/console/transfers/{transfer_id}"))
            .await
            .expect("transfer");
        if exists(&browser, "#transfer").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transfer at {transfer_position} never projected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(visible_text(&browser, "amount").await, "1.00 EUR");
    assert_eq!(visible_text(&browser, "status").await, "posted");
    assert_eq!(visible_text(&browser, "posted-amount").await, "1.00 EUR");
    let to = browser.find(Locator::Id("to")).await.expect("to link");
    assert_eq!(
        to.attr("href").await.expect("href").as_deref(),
        Some(&*format!("/console/accounts/{other_id}"))
    );
    screenshot(&browser, "transfer").await;

    // Projections, refreshed live; a rebuild started by the admin through the projector.
    browser
        .goto(&format!("{base}/console/projections"))
        .await
        .expect("projections");
    let table = visible_text(&browser, "projections").await;
    assert!(table.contains("account_transactions"), "{table}");
    let refreshed = browser
        .wait()
        .at_most(ELEMENT_WAIT)
        .for_element(Locator::Id("projections-state"))
        .await
        .expect("state");
    let deadline = Instant::now() + ELEMENT_WAIT;
    while !refreshed.text().await.expect("state").starts_with("updated") {
        assert!(Instant::now() < deadline, "the projections table never refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_usable(&browser, "projections").await;
    screenshot(&browser, "projections").await;
    browser
        .find(Locator::Id("rebuild-transfers"))
        .await
        .expect("rebuild button")
        .click()
        .await
        .expect("rebuild asked");
    let started = visible_text(&browser, "rebuild-started").await;
    assert!(started.contains("transfers"), "{started}");
    screenshot(&browser, "projections-rebuild").await;

    // Verify the log: the chain over everything written so far holds, and its head
    // hash is the one the API reports for the same range.
    browser
        .find(Locator::Id("verify-log"))
        .await
        .expect("verify link")
        .click()
        .await
        .expect("verify page");
    browser
        .find(Locator::Id("verify-run"))
        .await
        .expect("verify button")
        .click()
        .await
        .expect("verified");
    let verdict = visible_text(&browser, "verdict").await;
    assert!(verdict.starts_with("Verified"), "{verdict}");
    let head_hash = visible_text(&browser, "head-hash").await;
    assert_eq!(head_hash.len(), 64, "{head_hash}");
    assert!(
        head_hash.bytes().all(|byte| byte.is_ascii_hexdigit()),
        "{head_hash}"
    );
    assert_usable(&browser, "verify").await;
    screenshot(&browser, "verify").await;

    // The CSP header on every page visited (WebDriver does not show headers).
    let session = sign_in_cookie(&base).await;
    for path in [
        "/console".to_owned(),
        "/console/accounts".to_owned(),
        format!("/console/accounts/{account}"),
        "/console/audit".to_owned(),
        format!("/console/transfers/{transfer_id}"),
        "/console/projections".to_owned(),
        "/console/log/verify?run=1".to_owned(),
    ] {
        let response = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        let csp = response
            .headers()
            .get("content-security-policy")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
    }

    browser.close().await.expect("browser closed");
    drop(driver);
    assert!(
        system.shut_down().await.expect("shut down"),
        "a process did not stop cleanly"
    );
}

/// A session cookie for an admin, through the sign-in form over plain HTTP.
async fn sign_in_cookie(base: &str) -> String {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{base}/console/session"))
        .header("origin", base)
        .form(&[(
            "token",
            System::token("console-admin", &[Role::Admin]).expect("token"),
        )])
        .send()
        .await
        .expect("sign-in");
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().expect("cookie");
    cookie.split(';').next().expect("name=value").to_owned()
}
