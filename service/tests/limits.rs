//! The HTTP bounds every API server runs with, over real HTTP on port 0: a slow request
//! is cut with a 503 problem, a full server sheds with a 503 problem and `Retry-After`,
//! a long-lived stream is not cut, oversized headers are refused, and a client that
//! trickles its headers loses its connection.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::get;
use serde_json::Value;
use service::limits::{self, HttpLimits, MAX_HEADER_BYTES};
use service::serve;
use tokio::sync::{Notify, oneshot};

/// A router with a route that sleeps, one that waits until released, and a stream.
fn router(release: Arc<Notify>) -> Router {
    Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/held",
            get(move || {
                let release = release.clone();
                async move {
                    release.notified().await;
                    "released"
                }
            }),
        )
        .route("/fast", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "alive" }))
        .route(
            "/stream",
            get(|| async {
                // One chunk every 100 ms, ten of them: a second in all.
                let chunks = futures::stream::unfold(0_u32, |sent| async move {
                    if sent == 10 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, Infallible>(Bytes::from("tick\n")), sent + 1))
                });
                Body::from_stream(chunks)
            }),
        )
}

struct Server {
    address: String,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(limits: HttpLimits, release: Arc<Notify>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let address = listener.local_addr().expect("local address").to_string();
    let app = limits::apply(router(release), &limits, &["/stream"]);
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve::serve_with(
        listener,
        app,
        limits.header_read_timeout(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        address,
        stop: Some(stop),
        served,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = tokio::time::timeout(Duration::from_secs(5), &mut self.served)
            .await
            .expect("the server stops within 5 s");
        served.expect("server task").expect("server ends cleanly");
    }
}

async fn problem(response: reqwest::Response) -> (u16, Option<String>, Option<String>, Value) {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let retry_after = header("retry-after");
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, content_type, retry_after, body)
}

fn limits(request_timeout_ms: u64, max_concurrent_requests: usize) -> HttpLimits {
    HttpLimits {
        request_timeout_ms,
        max_concurrent_requests,
        header_read_timeout_ms: 300,
    }
}

#[tokio::test]
async fn a_request_slower_than_the_timeout_is_cut_with_a_503_problem() {
    let server = start(limits(200, 8), Arc::new(Notify::new())).await;
    let started = Instant::now();
    let response = reqwest::get(server.url("/slow")).await.expect("answer");
    let elapsed = started.elapsed();
    let (status, content_type, retry_after, body) = problem(response).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["type"], "https://eventledger.dev/problems/timeout");
    assert_eq!(body["status"], 503);
    assert!(
        elapsed < Duration::from_secs(5),
        "cut after {elapsed:?}, not after the handler's 30 s"
    );
    // A fast request on the same server is untouched.
    let fast = reqwest::get(server.url("/fast")).await.expect("answer");
    assert_eq!(fast.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_on_an_untimed_path_outlives_the_request_timeout() {
    let server = start(limits(200, 8), Arc::new(Notify::new())).await;
    let started = Instant::now();
    let response = reqwest::get(server.url("/stream")).await.expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.expect("the whole stream arrives");
    assert_eq!(body.lines().count(), 10, "{body}");
    assert!(started.elapsed() > Duration::from_millis(800));
    server.stop().await;
}

#[tokio::test]
async fn a_full_server_sheds_with_a_503_problem_and_retry_after_but_still_answers_healthz() {
    let release = Arc::new(Notify::new());
    let server = start(limits(10_000, 2), release.clone()).await;
    let client = reqwest::Client::new();
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.get(server.url("/held")).send()))
        .collect();
    // Wait until both slots are taken: a third request is shed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let shed = loop {
        let response = client.get(server.url("/fast")).send().await.expect("answer");
        if response.status().as_u16() == 503 {
            break response;
        }
        assert!(Instant::now() < deadline, "the limit never filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status, content_type, retry_after, body) = problem(shed).await;
    assert_eq!(status, 503);
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["type"], "https://eventledger.dev/problems/overloaded");
    // Liveness is never shed.
    let alive = client.get(server.url("/healthz")).send().await.expect("answer");
    assert_eq!(alive.status().as_u16(), 200);
    // Once the held requests finish, the slots are free again.
    release.notify_waiters();
    for request in held {
        let response = request.await.expect("task").expect("answer");
        assert_eq!(response.status().as_u16(), 200);
    }
    let fast = client.get(server.url("/fast")).send().await.expect("answer");
    assert_eq!(fast.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test]
async fn headers_over_the_limit_are_a_431_problem() {
    let server = start(limits(10_000, 8), Arc::new(Notify::new())).await;
    let response = reqwest::Client::new()
        .get(server.url("/fast"))
        .header("x-padding", "p".repeat(MAX_HEADER_BYTES))
        .send()
        .await
        .expect("answer");
    let (status, content_type, _, body) = problem(response).await;
    assert_eq!(status, 431, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(body["type"], "https://eventledger.dev/problems/headers-too-large");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_loses_the_connection() {
    let server = start(limits(10_000, 8), Arc::new(Notify::new())).await;
    let address = server.address.clone();
    // Blocking I/O on a thread of its own: the test only needs one socket, read to end.
    let (received, elapsed) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
            .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n")
            .expect("write the first header");
        let started = Instant::now();
        // Never finish the headers: the server must close (after 300 ms), not wait forever.
        let mut received = Vec::new();
        let read = stream.read_to_end(&mut received);
        assert!(read.is_ok(), "the connection was still open after 5 s: {read:?}");
        (received, started.elapsed())
    })
    .await
    .expect("client thread");
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("200 OK"), "{text}");
    server.stop().await;
}
