//! OpenTelemetry traces across the real processes (README, "Observing"): one deposit sent
//! with a known `traceparent` is one trace, from command-api's request span through the
//! command's decision, its group commit and the relay's publish, to the projector's
//! span per projection, each with the right parent or link. An OTLP/HTTP receiver inside
//! the test decodes what the processes export (`opentelemetry-proto`). And a collector
//! that is down costs commands nothing: they succeed and the process stops cleanly.
//!
//! Needs the binaries built (scripts/test.sh does it).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::{Value, json};
use service::auth::Role;
use tests::harness::{Binary, System};
use uuid::Uuid;

/// The longest the test waits for the spans of one deposit to arrive. The processes
/// export every [`EXPORT_DELAY_MS`]; the rest is a loaded machine's slack.
const SPANS_TIMEOUT: Duration = Duration::from_secs(30);

/// `OTEL_BSP_SCHEDULE_DELAY` of the processes under test (milliseconds), so spans arrive
/// within a fraction of a second rather than the default five.
const EXPORT_DELAY_MS: &str = "100";

/// One exported span as the assertions need it: ids as lowercase hex.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// `(trace id, span id)` of every link.
    links: Vec<(String, String)>,
}

/// Every span the receiver got, in arrival order.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Received {
    fn spans(&self) -> Vec<ReceivedSpan> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `POST /v1/traces` of OTLP/HTTP with a protobuf body, as the OpenTelemetry collector
/// answers it.
async fn receive_traces(State(received): State<Received>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| resource.attributes.iter())
            .find(|attribute| attribute.key == "service.name")
            .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
            .map(|value| match value {
                any_value::Value::StringValue(name) => name.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            spans.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                links: span
                    .links
                    .iter()
                    .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                    .collect(),
            });
        }
    }
    received
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(spans);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// Starts the receiver on a free port; returns its base URL (the processes'
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it receives. It runs until the test ends.
async fn start_receiver() -> (String, Received) {
    let received = Received::default();
    let router = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive_traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver binds");
    let address = listener.local_addr().expect("receiver address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}"), received)
}

fn teller() -> reqwest::Client {
    let token = System::token("traces-e2e", &[Role::Teller]).expect("token");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Opens an account and deposits into it, the deposit with `traceparent` when given;
/// returns the account id.
async fn open_and_deposit(system: &System, traceparent: Option<&str>) -> String {
    let client = teller();
    let (status, opened) = json_of(
        client
            .post(system.url(Binary::CommandApi, "/accounts"))
            .json(&json!({ "owner": { "name": "Tracy Spanner", "email": "tracy@example.org" }, "currency": "EUR" }))
            .send()
            .await
            .expect("open"),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    let account_id = opened["account_id"].as_str().expect("account_id").to_owned();
    let mut deposit = client
        .post(system.url(Binary::CommandApi, &format!("/accounts/{account_id}/deposits")))
        .json(&json!({ "amount": 1_250 }));
    if let Some(traceparent) = traceparent {
        deposit = deposit.header("traceparent", traceparent);
    }
    let (status, deposited) = json_of(deposit.send().await.expect("deposit")).await;
    assert_eq!(status, 200, "{deposited}");
    account_id
}

/// Waits until each projection's durable consumer has a pull request waiting, that is
/// until the projector applies that projection live from JetStream.
async fn wait_until_following(system: &System) {
    let addrs = service::nats::server_addrs(&system.nats_url).expect("NATS_URL");
    let client = async_nats::connect(addrs).await.expect("NATS");
    let jetstream = async_nats::jetstream::new(client);
    let deadline = tokio::time::Instant::now() + SPANS_TIMEOUT;
    for projection in ["accounts", "account_transactions", "transfers"] {
        loop {
            let waiting = match jetstream.get_stream(&system.stream_name).await {
                Ok(stream) => match stream.consumer_info(format!("projector_{projection}")).await {
                    Ok(info) => info.num_waiting,
                    Err(_) => 0,
                },
                Err(_) => 0,
            };
            if waiting > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the projection {projection} did not start following its consumer within {SPANS_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The spans of `service` named `name` in `trace_id` that arrived so far.
fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str, trace_id: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|span| span.service == service && span.name == name && span.trace_id == trace_id)
        .collect()
}

#[tokio::test]
async fn one_deposit_is_one_trace_from_the_request_to_the_projections() {
    let (endpoint, received) = start_receiver().await;
    let mut system = System::start(&[]).await.expect("system");
    let settings = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS),
    ];
    for binary in [Binary::CommandApi, Binary::Projector] {
        system
            .add_configured(binary, &settings, None)
            .await
            .expect("process starts");
    }

    // The assertion that one projection got the event through NATS needs every
    // projection following its consumer before the deposit: a projection that took its
    // lease after the commit reads the event from the store in its catch-up instead.
    wait_until_following(&system).await;

    let trace_id = Uuid::new_v4().simple().to_string();
    let mut client_span_id = Uuid::new_v4().simple().to_string();
    client_span_id.truncate(16);
    let traceparent = format!("00-{trace_id}-{client_span_id}-01");
    open_and_deposit(&system, Some(&traceparent)).await;

    // Three projections each project the deposit once.
    let deadline = tokio::time::Instant::now() + SPANS_TIMEOUT;
    let spans = loop {
        let spans = received.spans();
        let projected = find(&spans, "projector", "project FundsDeposited", &trace_id).len();
        let published = find(&spans, "command-api", "publish", &trace_id).len();
        let commits = spans
            .iter()
            .filter(|span| {
                span.name == "group commit" && span.links.iter().any(|(trace, _)| *trace == trace_id)
            })
            .count();
        if projected >= 3 && published >= 1 && commits >= 1 {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deposit's spans did not all arrive within {SPANS_TIMEOUT:?}: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The request continues the client's trace.
    let requests = find(&spans, "command-api", "POST /accounts/{id}/deposits", &trace_id);
    assert_eq!(requests.len(), 1, "{spans:#?}");
    let request = requests[0];
    assert_eq!(request.parent_span_id, client_span_id, "{request:?}");

    // The decision is the request's child; the group commit links to the request.
    let decisions = find(&spans, "command-api", "decide", &trace_id);
    assert_eq!(decisions.len(), 1, "{spans:#?}");
    assert_eq!(decisions[0].parent_span_id, request.span_id, "{:?}", decisions[0]);
    let commit = spans
        .iter()
        .find(|span| span.name == "group commit" && span.links.iter().any(|(trace, _)| *trace == trace_id))
        .expect("group commit");
    assert_eq!(commit.service, "command-api");
    assert!(
        commit
            .links
            .contains(&(trace_id.clone(), request.span_id.clone())),
        "the batch links to the request: {commit:?}"
    );

    // The relay publishes as the request's child. Each projection continues the context
    // the event came with: the publish span's from the NATS header, or the request's
    // from the stored metadata when the projection caught up from the store instead;
    // and its `apply batch` span links to that same context.
    let publish = find(&spans, "command-api", "publish", &trace_id)[0];
    assert_eq!(publish.parent_span_id, request.span_id, "{publish:?}");
    let projected = find(&spans, "projector", "project FundsDeposited", &trace_id);
    assert_eq!(projected.len(), 3, "one per projection: {projected:#?}");
    for project in &projected {
        assert!(
            project.parent_span_id == publish.span_id || project.parent_span_id == request.span_id,
            "{project:?} continues neither {publish:?} nor {request:?}"
        );
        let linked = (trace_id.clone(), project.parent_span_id.clone());
        assert!(
            spans.iter().any(|span| span.service == "projector"
                && span.name == "apply batch"
                && span.links.contains(&linked)),
            "an apply batch span links to {linked:?}: {spans:#?}"
        );
    }
    assert!(
        projected
            .iter()
            .any(|project| project.parent_span_id == publish.span_id),
        "at least one projection got the event through NATS: {projected:#?}"
    );

    // The trace as a collector shows it (`cargo test --test traces -- --nocapture`).
    let mut listed = String::new();
    for span in spans
        .iter()
        .filter(|span| span.trace_id == trace_id || span.links.iter().any(|(trace, _)| *trace == trace_id))
    {
        let linked = if span.trace_id == trace_id {
            ""
        } else {
            " (linked)"
        };
        listed.push_str(&format!(
            "  {:<12} {:<32} span {} parent {}{linked}\n",
            span.service, span.name, span.span_id, span.parent_span_id
        ));
    }
    eprintln!("trace {trace_id}, client span {client_span_id}:\n{listed}");

    assert!(system.shut_down().await.expect("shut down"), "clean exit");
}

#[tokio::test]
async fn commands_succeed_and_the_process_stops_cleanly_when_the_collector_is_down() {
    // A port nobody listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port");
    let endpoint = format!("http://{closed}");
    let mut system = System::start(&[]).await.expect("system");
    system
        .add_configured(
            Binary::CommandApi,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS),
            ],
            None,
        )
        .await
        .expect("command-api starts");
    let traceparent = format!("00-{}-00f067aa0ba902b7-01", Uuid::new_v4().simple());
    for _ in 0..3 {
        open_and_deposit(&system, Some(&traceparent)).await;
    }
    assert!(
        system.shut_down().await.expect("shut down"),
        "command-api exits cleanly with its collector down"
    );
}
