//! The tamper-evident log end to end (API.md, "Tamper-evident log"): commands through
//! the real `command-api` (the largest amount the ledger allows, a transfer, an
//! erasure), then `GET /audit/verify` on the real `query-api` verifies the chain, the
//! audit envelopes and the relay's NATS messages carry the same hashes, and only an
//! auditor (or admin) may ask. Needs the binaries built (scripts/test.sh does).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{Value, json};
use service::auth::Role;
use tests::harness::{Binary, System};

/// How long the relay may take to publish a handful of events.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);

struct Client(reqwest::Client);

impl Client {
    fn holding(subject: &str, roles: &[Role]) -> Self {
        let token = System::token(subject, roles).expect("token");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        Self(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .expect("client"),
        )
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, url: String, body: Value) -> Value {
        let (status, answer) = self.send(self.0.post(url).json(&body)).await;
        assert!((200..300).contains(&status), "{status}: {answer}");
        answer
    }

    async fn get(&self, url: String) -> (u16, Value) {
        self.send(self.0.get(url)).await
    }
}

async fn open(system: &System, teller: &Client) -> String {
    let answer = teller
        .post(
            system.url(Binary::CommandApi, "/accounts"),
            json!({ "owner": { "name": "Ada Lovelace", "email": "ada@example.com" }, "currency": "EUR" }),
        )
        .await;
    answer["account_id"].as_str().expect("account_id").to_owned()
}

#[tokio::test]
async fn commands_over_http_build_a_chain_that_verifies_and_travels_on_nats() {
    let mut system = System::start(&[Binary::CommandApi, Binary::QueryApi])
        .await
        .expect("system starts");
    let teller = Client::holding("chain-teller", &[Role::Teller]);
    let admin = Client::holding("chain-admin", &[Role::Admin]);
    let auditor = Client::holding("chain-auditor", &[Role::Auditor]);
    let viewer = Client::holding("chain-viewer", &[Role::Viewer]);

    let a = open(&system, &teller).await;
    let b = open(&system, &teller).await;
    // 10^18 minor units: beyond 2^53, hashed as text.
    teller
        .post(
            system.url(Binary::CommandApi, &format!("/accounts/{a}/deposits")),
            json!({ "amount": 1_000_000_000_000_000_i64, "reference": "the largest deposit" }),
        )
        .await;
    teller
        .post(
            system.url(Binary::CommandApi, "/transfers"),
            json!({ "from_account_id": a, "to_account_id": b, "amount": 999_999_999_999_999_i64 }),
        )
        .await;
    let (status, erased) = admin
        .send(
            admin
                .0
                .delete(system.url(Binary::CommandApi, &format!("/accounts/{a}/personal-data"))),
        )
        .await;
    assert_eq!(status, 200, "{erased}");
    let head = erased["position"].as_i64().expect("position");

    // Opened twice, deposited, three transfer events, erased.
    assert_eq!(head, 7);
    let verify_url = system.url(Binary::QueryApi, "/audit/verify");
    let (status, verdict) = auditor.get(verify_url.clone()).await;
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(
        (verdict["from"].as_i64(), verdict["to"].as_i64()),
        (Some(1), Some(head))
    );
    assert_eq!(verdict["verified"], head);
    let (status, refused) = viewer.get(verify_url).await;
    assert_eq!(status, 403, "{refused}");

    let (status, page) = auditor
        .get(system.url(Binary::QueryApi, "/audit/events?limit=1000"))
        .await;
    assert_eq!(status, 200, "{page}");
    let audit_hashes: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["hash"].as_str().expect("hash").to_owned())
        .collect();
    assert_eq!(audit_hashes.len() as i64, head);
    assert_eq!(verdict["head_hash"], audit_hashes[head as usize - 1].as_str());

    // The relay's messages carry the same hash for each position.
    let client = async_nats::connect(&system.nats_url).await.expect("NATS");
    let jetstream = jetstream::new(client);
    let deadline = Instant::now() + RELAY_TIMEOUT;
    // The relay creates the stream on its first round, which may not have run yet.
    let mut stream = loop {
        match jetstream.get_stream(&system.stream_name).await {
            Ok(stream) => break stream,
            Err(error) => {
                assert!(Instant::now() < deadline, "the system's stream: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    loop {
        let held = stream.info().await.expect("stream info").state.messages;
        if held as i64 >= head {
            break;
        }
        assert!(Instant::now() < deadline, "the relay published {held} of {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sequence in 1..=head as u64 {
        let message = stream.get_raw_message(sequence).await.expect("message");
        let envelope: Value = serde_json::from_slice(&message.payload).expect("envelope");
        let position = envelope["position"].as_i64().expect("position");
        assert_eq!(
            envelope["hash"].as_str(),
            Some(audit_hashes[position as usize - 1].as_str()),
            "position {position}"
        );
    }

    // The command API chains at start whatever was written around it: after a restart,
    // with the log as it was, the chain still verifies, and new commands extend it.
    system
        .process(Binary::CommandApi)
        .expect("command-api")
        .restart()
        .await
        .expect("restart");
    teller
        .post(
            system.url(Binary::CommandApi, &format!("/accounts/{b}/withdrawals")),
            json!({ "amount": 1 }),
        )
        .await;
    let (status, verdict) = auditor.get(system.url(Binary::QueryApi, "/audit/verify")).await;
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["verified"], head + 1);

    assert!(system.shut_down().await.expect("shut down"), "clean exit");
}
