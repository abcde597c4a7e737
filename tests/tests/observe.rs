//! What operators see of a running system (README, "Observing"): every process's
//! `/metrics` passes `promtool check metrics` and carries histograms with buckets and the
//! HTTP RED series; JSON log lines carry the stable fields a log pipeline indexes; text
//! logs written to a file carry no ANSI colour codes; and no log line of a run that
//! opened an account holds the owner's name or email. The image's `healthcheck` probe
//! answers for a running process and fails without one.
//!
//! Needs the binaries built and promtool installed (scripts/test.sh does both; it finds
//! promtool through `PROMTOOL`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use service::auth::Role;
use tests::harness::{Binary, System, binary_path};
use uuid::Uuid;

/// How long a read waits for the projection to include a write (`wait_ms`).
const WAIT_MS: u64 = 10_000;

/// Log filter of the run: the processes' own debug lines (one per answered request) and
/// everyone else's info, so the scan covers more than the quiet default.
const LOG_FILTER: &str =
    "info,service=debug,command_api=debug,query_api=debug,projector=debug,event_store=debug";

/// A directory for the run's log files, removed on drop.
struct LogDirectory(PathBuf);

impl LogDirectory {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("eventledger-observe-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&path).expect("log directory");
        Self(path)
    }

    fn file(&self, binary: Binary) -> PathBuf {
        self.0.join(format!("{}.log", binary.name()))
    }
}

impl Drop for LogDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn promtool() -> PathBuf {
    let path = std::env::var_os("PROMTOOL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/ci-tools/root/usr/bin/promtool"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "promtool is missing at {}: run scripts/test.sh, which installs it",
        path.display()
    );
    path
}

/// The exposition a `GET` of `url` (a process's `/metrics`) answers.
async fn scrape(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// `promtool check metrics` over `exposition`: its exit status and what it said.
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("exposition written");
    let output = child.wait_with_output().expect("promtool finishes");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

fn authorized(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("client")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

#[tokio::test]
async fn metrics_pass_promtool_and_json_logs_have_stable_fields_and_no_personal_data() {
    let logs = LogDirectory::new();
    let mut system = System::start(&[]).await.expect("system");
    for binary in Binary::ALL {
        system
            .add_configured(
                binary,
                &[("LOG_FORMAT", "json"), ("RUST_LOG", LOG_FILTER)],
                Some(logs.file(binary)),
            )
            .await
            .expect("process starts");
    }
    let teller = authorized(&System::token("observe-e2e", &[Role::Teller]).expect("token"));
    let viewer = authorized(&System::token("observe-e2e", &[Role::Viewer]).expect("token"));

    // Unique, so that finding them in a log can only mean this run's owner leaked.
    let marker = Uuid::now_v7().simple().to_string();
    let name = format!("Ottoline Quarrendon {marker}");
    let email = format!("ottoline.{marker}@example.org");
    let correlation_id = format!("observe-{marker}");
    let (status, opened) = json_of(
        teller
            .post(system.url(Binary::CommandApi, "/accounts"))
            .header("X-Correlation-Id", &correlation_id)
            .json(&json!({ "owner": { "name": name, "email": email }, "currency": "EUR" }))
            .send()
            .await
            .expect("open"),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    let account_id = opened["account_id"].as_str().expect("account_id").to_owned();
    let (status, deposit) = json_of(
        teller
            .post(system.url(Binary::CommandApi, &format!("/accounts/{account_id}/deposits")))
            .header("X-Correlation-Id", &correlation_id)
            .json(&json!({ "amount": 2_500 }))
            .send()
            .await
            .expect("deposit"),
    )
    .await;
    assert_eq!(status, 200, "{deposit}");
    let position = deposit["position"].as_i64().expect("position");
    let (status, account) = json_of(
        viewer
            .get(system.url(
                Binary::QueryApi,
                &format!("/accounts/{account_id}?min_position={position}&wait_ms={WAIT_MS}"),
            ))
            .send()
            .await
            .expect("read"),
    )
    .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["owner"]["email"], json!(email), "the owner reads back");
    // A path no route matches is counted under one label, not its own.
    let (status, _) = json_of(
        viewer
            .get(system.url(Binary::QueryApi, &format!("/no-such-route-{marker}")))
            .send()
            .await
            .expect("unmatched"),
    )
    .await;
    assert_eq!(status, 404);

    // Every process's exposition is clean for promtool, and histograms have buckets.
    let anonymous = reqwest::Client::new();
    let mut expositions = Vec::new();
    for binary in Binary::ALL {
        let exposition = scrape(&anonymous, &system.url(binary, "/metrics")).await;
        let (clean, said) = promtool_check_metrics(&exposition);
        assert!(clean, "{}: promtool check metrics said:\n{said}", binary.name());
        assert!(
            !exposition.contains("quantile="),
            "{}: a summary is exported:\n{exposition}",
            binary.name()
        );
        assert!(
            exposition.contains("eventledger_ready 1"),
            "{}: not ready in its metrics",
            binary.name()
        );
        expositions.push(exposition);
    }
    let [command_api, query_api, projector] = &expositions[..] else {
        unreachable!("three processes")
    };
    for series in [
        r#"http_requests_total{route="/accounts/{id}/deposits",method="POST",status="200"} 1"#,
        r#"http_request_duration_seconds_bucket{route="/accounts/{id}/deposits",method="POST",le="0.005"}"#,
        r#"command_api_command_seconds_bucket{command="deposit",le="+Inf"} 1"#,
        r#"command_api_batch_commands_bucket{le="1"}"#,
    ] {
        assert!(
            command_api.contains(series),
            "command-api lacks {series}:\n{command_api}"
        );
    }
    // Gauges set at start, before the first scrape, are there: the relay's and the
    // projection leases of the one instance of each. The relay's is 0 until the relay
    // has reached NATS and taken its lock, and between a failed round and the next, so
    // it is asked again.
    let mut command_api_now = command_api.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tests::workload::relay_active(&command_api_now) != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "command-api lacks relay_active 1:\n{command_api_now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        command_api_now = scrape(&anonymous, &system.url(Binary::CommandApi, "/metrics")).await;
    }
    for projection in ["accounts", "account_transactions", "transfers"] {
        let series = format!(r#"projector_lease_held{{projection="{projection}"}} 1"#);
        assert!(
            projector.contains(&series),
            "projector lacks {series}:\n{projector}"
        );
    }
    for series in [
        r#"http_requests_total{route="/accounts/{id}",method="GET",status="200"} 1"#,
        r#"http_requests_total{route="unmatched",method="GET",status="404"} 1"#,
    ] {
        assert!(
            query_api.contains(series),
            "query-api lacks {series}:\n{query_api}"
        );
    }
    assert!(
        !query_api.contains(&marker),
        "a path no route matched became a label"
    );

    assert!(
        system.shut_down().await.expect("shut down"),
        "a process did not stop cleanly"
    );

    // Every line is one JSON object with the stable fields; none holds the owner.
    let mut request_lines_with_correlation = 0;
    for binary in Binary::ALL {
        let log = read_log(&logs.file(binary));
        assert!(!log.is_empty(), "{} logged nothing", binary.name());
        // The marker is also in the correlation id, which may be logged: look for the
        // owner's own words and address instead.
        for personal in [
            name.as_str(),
            email.as_str(),
            "Ottoline",
            "Quarrendon",
            "ottoline.",
        ] {
            assert!(
                !log.contains(personal),
                "{}: a log line holds the owner's name or email ({personal})",
                binary.name()
            );
        }
        assert!(
            !log.contains('\u{1b}'),
            "{}: ANSI escape codes in a JSON log",
            binary.name()
        );
        for line in log.lines().filter(|line| !line.trim().is_empty()) {
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{}: not a JSON line ({error}): {line}", binary.name()));
            for field in ["timestamp", "level", "target", "message"] {
                assert!(
                    entry[field].is_string(),
                    "{}: no string `{field}` in {line}",
                    binary.name()
                );
            }
            if entry["span"]["correlation_id"] == json!(correlation_id) {
                assert_eq!(entry["span"]["name"], json!("request"), "{line}");
                assert!(entry["span"]["method"].is_string(), "{line}");
                request_lines_with_correlation += 1;
            }
        }
    }
    assert!(
        request_lines_with_correlation >= 2,
        "the two commands' request lines carry their correlation id"
    );
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_codes_and_the_healthcheck_probes_the_process() {
    let logs = LogDirectory::new();
    let mut system = System::start(&[]).await.expect("system");
    system
        .add_configured(
            Binary::Projector,
            &[("LOG_FORMAT", "text"), ("RUST_LOG", "info")],
            Some(logs.file(Binary::Projector)),
        )
        .await
        .expect("projector starts");
    let address = system
        .process(Binary::Projector)
        .expect("projector")
        .address
        .clone();

    // The image's probe: healthy against the running projector, whichever variable
    // names it; unhealthy when nothing listens on any of the three ports.
    let healthcheck = binary_path(Binary::Projector)
        .expect("binaries built")
        .with_file_name("healthcheck");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        listener.local_addr().expect("address").to_string()
    };
    let probe = |projector: &str| {
        std::process::Command::new(&healthcheck)
            .env("COMMAND_API_ADDR", &closed)
            .env("QUERY_API_ADDR", &closed)
            .env("PROJECTOR_ADDR", projector)
            .status()
            .expect("healthcheck runs")
            .success()
    };
    assert!(probe(&address), "healthcheck fails against a running projector");
    assert!(!probe(&closed), "healthcheck passes with nothing listening");

    assert!(
        system.shut_down().await.expect("shut down"),
        "the projector did not stop cleanly"
    );
    let log = read_log(&logs.file(Binary::Projector));
    assert!(
        log.contains("listening"),
        "the projector's start is logged:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a text log file:\n{log}"
    );
}
