//! Personal data at rest, end to end (API.md, "Security"): an owner's name and email
//! are never stored in plaintext anywhere (the event log, the read models, the NATS
//! JetStream store, a `pg_dump`), the query API shows them only while the account's
//! key exists, and after an (admin-only, idempotent) erasure every answer shows `null`,
//! also after the read model is rebuilt from the log.
//!
//! The relay publishes to a private `nats-server` whose store directory this test owns,
//! so it can scan JetStream's files; `pg_dump` must be installed (it comes with
//! PostgreSQL). Needs the binaries built (scripts/test.sh does).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use service::auth::Role;
use tests::harness::{Binary, System};
use uuid::Uuid;

/// How long a read waits for the projection to include a write (`wait_ms`).
const WAIT_MS: u64 = 10_000;

/// How long JetStream may take to write a published message into its block files.
const STORE_FLUSH_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a rebuild of the accounts projection may take for a handful of events.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(60);

/// A private JetStream server with a store directory of its own, removed on drop.
struct PrivateNats {
    port: u16,
    store_dir: PathBuf,
    child: std::process::Child,
}

impl PrivateNats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let store_dir =
            std::env::temp_dir().join(format!("eventledger-pii-nats-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&store_dir).expect("store directory");
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let child = std::process::Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        Self {
            port,
            store_dir,
            child,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Any answer of the JetStream API means it is up (its account report changed
            // shape across server versions, so it is not decoded).
            if let Ok(client) = async_nats::connect(self.url()).await
                && client.request("$JS.API.INFO", "".into()).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "the private nats-server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

/// Every byte of every file under `directory`, as (lossy) text.
fn read_tree(directory: &Path) -> String {
    let mut text = String::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read store directory").flatten() {
                pending.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

/// The JetStream store's files once they hold `marker` (the relay published and the
/// server wrote the message out).
async fn nats_store_holding(nats: &PrivateNats, marker: &str) -> String {
    let deadline = Instant::now() + STORE_FLUSH_TIMEOUT;
    loop {
        let text = read_tree(&nats.store_dir);
        if text.contains(marker) {
            return text;
        }
        assert!(Instant::now() < deadline, "JetStream's store never held {marker}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain-SQL dump of the test system's whole database: events, read models, keys,
/// idempotency records, everything a backup would hold.
fn pg_dump(system: &System) -> String {
    let database = system
        .database_url
        .rsplit_once('/')
        .map(|(_, name)| name)
        .expect("database name");
    let output = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", database])
        .output()
        .expect("pg_dump runs");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    fn new(roles: &[Role]) -> Self {
        let token = System::token("pii-e2e", roles).expect("token");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .expect("client"),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, url: &str) -> (u16, Value) {
        self.send(self.http.get(url)).await
    }

    async fn post(&self, url: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(url).json(&body)).await
    }

    async fn delete(&self, url: &str) -> (u16, Value) {
        self.send(self.http.delete(url)).await
    }
}

fn position(answer: &Value) -> i64 {
    answer["position"].as_i64().expect("position in command answer")
}

/// What the query API shows of `account_id`'s owner: the account view, the list, the
/// history at the account's opening, and the `AccountOpened` envelope of the audit log.
async fn owners_shown(system: &System, client: &Client, account_id: &str, min_position: i64) -> [Value; 4] {
    let query = |path: String| system.url(Binary::QueryApi, &path);
    let (status, account) = client
        .get(&query(format!(
            "/accounts/{account_id}?min_position={min_position}&wait_ms={WAIT_MS}"
        )))
        .await;
    assert_eq!(status, 200, "{account}");
    let (status, page) = client.get(&query("/accounts?limit=1000".to_owned())).await;
    assert_eq!(status, 200, "{page}");
    let listed = page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|item| item["account_id"] == account_id))
        .map(|item| item["owner"].clone())
        .expect("the account is listed");
    let (status, stream) = client
        .get(&query(format!(
            "/audit/streams/account-{account_id}?min_position={min_position}&wait_ms={WAIT_MS}"
        )))
        .await;
    assert_eq!(status, 200, "{stream}");
    let opened = &stream["items"][0];
    assert_eq!(opened["event_type"], "AccountOpened");
    let opened_at = opened["position"].as_i64().expect("position");
    let (status, history) = client
        .get(&query(format!(
            "/accounts/{account_id}/history?at_position={opened_at}"
        )))
        .await;
    assert_eq!(status, 200, "{history}");
    [
        account["owner"].clone(),
        listed,
        history["owner"].clone(),
        opened["data"]["owner"].clone(),
    ]
}

/// Starts a rebuild of the accounts projection and waits until it is live again at
/// `position` or later with `account_id`'s owner columns empty (so the rebuilt table,
/// not the one the test wrote ciphertext into, is in place).
async fn rebuild_accounts(
    system: &System,
    admin: &Client,
    database: &sqlx::PgPool,
    account_id: Uuid,
    position: i64,
) {
    let (status, started) = admin
        .post(
            &system.url(Binary::Projector, "/projections/accounts/rebuild"),
            json!({}),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {started}");
    let deadline = Instant::now() + REBUILD_TIMEOUT;
    loop {
        let (_, projections) = admin.get(&system.url(Binary::Projector, "/projections")).await;
        let accounts = projections
            .as_array()
            .or_else(|| projections["items"].as_array())
            .and_then(|items| items.iter().find(|item| item["name"] == "accounts"))
            .cloned()
            .unwrap_or(Value::Null);
        let owner_columns: (Option<String>, Option<String>) =
            sqlx::query_as("SELECT owner_name, owner_email FROM read_model.accounts WHERE account_id = $1")
                .bind(account_id)
                .fetch_one(database)
                .await
                .expect("account row");
        if accounts["status"] == "live"
            && accounts["position"].as_i64().unwrap_or(0) >= position
            && owner_columns == (None, None)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild did not finish: {projections}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn personal_data_is_never_stored_in_plaintext_and_is_unreadable_everywhere_after_erasure() {
    let nats = PrivateNats::start();
    nats.wait_until_ready().await;
    let mut system = System::start(&[]).await.expect("system");
    system.nats_url = nats.url();
    for binary in Binary::ALL {
        system.add(binary).await.expect("process starts");
    }
    let admin = Client::new(&[Role::Admin]);
    let teller = Client::new(&[Role::Teller]);

    // Unique, so that finding them anywhere can only mean this test's owner leaked.
    let marker = Uuid::now_v7().simple().to_string();
    let name = format!("Philippa Zanzibar {marker}");
    let email = format!("philippa.{marker}@example.org");
    let (status, opened) = teller
        .post(
            &system.url(Binary::CommandApi, "/accounts"),
            json!({ "owner": { "name": name, "email": email }, "currency": "EUR" }),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let account_id = opened["account_id"].as_str().expect("account_id").to_owned();
    let (status, deposit) = teller
        .post(
            &system.url(Binary::CommandApi, &format!("/accounts/{account_id}/deposits")),
            json!({ "amount": 1_000 }),
        )
        .await;
    assert_eq!(status, 200, "{deposit}");
    let deposited_at = position(&deposit);

    // While the key exists, the owner is shown opened wherever it is shown.
    let owner = json!({ "name": name, "email": email });
    let shown = owners_shown(&system, &admin, &account_id, deposited_at).await;
    assert_eq!(shown, [owner.clone(), owner.clone(), owner.clone(), owner]);

    // ... and was never stored in plaintext: not in the database (events, read models,
    // idempotency records), not in JetStream, which holds the envelopes all the same.
    let dump = pg_dump(&system);
    assert!(dump.contains(&account_id), "the dump holds the account");
    assert!(
        dump.contains(event_store::pii::SEALED_PREFIX),
        "the dump holds sealed owners"
    );
    assert!(
        !dump.contains(&marker),
        "plaintext owner in the database before erasure"
    );
    let store = nats_store_holding(&nats, &format!("account-{account_id}")).await;
    assert!(
        store.contains(event_store::pii::SEALED_PREFIX),
        "JetStream holds the sealed owner"
    );
    assert!(
        !store.contains(&marker),
        "plaintext owner in JetStream before erasure"
    );

    // Erasure: admin only, then idempotent.
    let erase_url = system.url(
        Binary::CommandApi,
        &format!("/accounts/{account_id}/personal-data"),
    );
    let (status, refused) = teller.delete(&erase_url).await;
    assert_eq!(status, 403, "{refused}");
    let (status, erased) = admin.delete(&erase_url).await;
    assert_eq!(status, 200, "{erased}");
    let erased_at = position(&erased);
    let (status, again) = admin.delete(&erase_url).await;
    assert_eq!((status, position(&again)), (200, erased_at), "{again}");

    // Every answer shows null now, from the live read model ...
    assert_eq!(
        owners_shown(&system, &admin, &account_id, erased_at).await,
        [Value::Null, Value::Null, Value::Null, Value::Null]
    );
    let database = sqlx::PgPool::connect(&system.database_url)
        .await
        .expect("database");
    let account_uuid: Uuid = account_id.parse().expect("uuid");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM pii_keys WHERE subject_id = $1")
        .bind(account_uuid)
        .fetch_one(&database)
        .await
        .expect("keys");
    assert_eq!(keys, 0, "the key is destroyed");
    // ... even from a read model that still holds the ciphertext (one restored from a
    // backup taken before the erasure, say): without the key it opens to nothing ...
    let restored = sqlx::query(
        "UPDATE read_model.accounts SET owner_name = e.data -> 'owner' ->> 'name', \
         owner_email = e.data -> 'owner' ->> 'email' FROM events e \
         WHERE account_id = $1 AND e.stream_id = $2 AND e.stream_version = 1",
    )
    .bind(account_uuid)
    .bind(format!("account-{account_id}"))
    .execute(&database)
    .await
    .expect("restore the ciphertext");
    assert_eq!(restored.rows_affected(), 1);
    assert_eq!(
        owners_shown(&system, &admin, &account_id, erased_at).await,
        [Value::Null, Value::Null, Value::Null, Value::Null]
    );
    // ... and from one rebuilt from the log, which folds the erasure in again.
    rebuild_accounts(&system, &admin, &database, account_uuid, erased_at).await;
    assert_eq!(
        owners_shown(&system, &admin, &account_id, erased_at).await,
        [Value::Null, Value::Null, Value::Null, Value::Null]
    );
    let (status, stream) = admin
        .get(&system.url(Binary::QueryApi, &format!("/audit/streams/account-{account_id}")))
        .await;
    assert_eq!(status, 200, "{stream}");
    let types: Vec<&str> = stream["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["event_type"].as_str())
        .collect();
    assert_eq!(types, ["AccountOpened", "FundsDeposited", "PersonalDataErased"]);

    // Nowhere at rest either: the name and email appear in no dump and no JetStream file
    // (which now holds the erasure too).
    let dump = pg_dump(&system);
    assert!(
        !dump.contains(&marker),
        "plaintext owner in the database after erasure"
    );
    let erased_event_id = stream["items"][2]["event_id"]
        .as_str()
        .expect("event id")
        .to_owned();
    let store = nats_store_holding(&nats, &erased_event_id).await;
    assert!(
        !store.contains(&marker),
        "plaintext owner in JetStream after erasure"
    );

    database.close().await;
    assert!(system.shut_down().await.expect("shut down"), "clean exits");
}
