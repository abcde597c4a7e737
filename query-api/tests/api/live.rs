//! The live tail over Server-Sent Events: catch-up, live delivery as events commit,
//! and resumption with `Last-Event-ID`.

use std::time::Duration;

use domain::AccountId;
use event_store::ExpectedVersion;
use futures::StreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{deposited, opened, spawn_app};

/// A safety bound so a broken stream fails the test instead of hanging it; not a
/// performance assertion.
const READ_BOUND: Duration = Duration::from_secs(20);

/// Reads SSE events (`id`, `data`) off a response body, skipping comments.
struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    async fn next_event(&mut self) -> (i64, serde_json::Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse::<i64>().expect("numeric id"));
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(value.trim()).expect("JSON data"));
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    return (id, data);
                }
                continue;
            }
            let chunk = tokio::time::timeout(READ_BOUND, self.body.next())
                .await
                .expect("an event within the bound")
                .expect("stream open")
                .expect("chunk");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_live_tail_streams_new_events_and_resumes_after_last_event_id(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = AccountId::from(Uuid::now_v7());
    app.append(
        a,
        ExpectedVersion::NoStream,
        vec![opened(a), deposited(a, 1)],
        "t",
        "c",
    )
    .await;

    let response = app.get("/audit/events/live?after=0").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let mut tail = SseReader::new(response);
    let (id, envelope) = tail.next_event().await;
    assert_eq!(id, 1);
    assert_eq!(envelope["position"], 1);
    assert_eq!(envelope["event_type"], "AccountOpened");
    assert_eq!(tail.next_event().await.0, 2);

    // Committed after the client connected: delivered live.
    app.append(
        a,
        ExpectedVersion::Exact(2),
        vec![deposited(a, 2), deposited(a, 3)],
        "t",
        "c",
    )
    .await;
    let (id, envelope) = tail.next_event().await;
    assert_eq!(id, 3);
    assert_eq!(envelope["data"]["amount"], 2);
    assert_eq!(tail.next_event().await.0, 4);
    drop(tail);

    // Reconnecting with Last-Event-ID resumes right after it, whatever `after` says.
    app.append(a, ExpectedVersion::Exact(4), vec![deposited(a, 4)], "t", "c")
        .await;
    let resumed = app
        .client
        .get(format!("{}/audit/events/live?after=0", app.address))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .expect("sent");
    let mut tail = SseReader::new(resumed);
    assert_eq!(tail.next_event().await.0, 4);
    assert_eq!(tail.next_event().await.0, 5);
}
