//! A test server that serves one small dataset through every pagination style,
//! body format and authentication kind the `http` source supports, plus a
//! parent/child pair, a pagination loop and a large streamed export.
//!
//! Every route returns the same records (`ZooServer::records`), so a sync of any
//! route can be compared with them row for row.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Credentials the auth routes expect.
pub const BASIC_USER: &str = "zoo-user";
/// The basic-auth password.
pub const BASIC_PASSWORD: &str = "zoo-password";
/// The API key (header `X-Api-Key` or query `api_key`).
pub const API_KEY: &str = "zoo-api-key";
/// OAuth2 client id.
pub const CLIENT_ID: &str = "zoo-client";
/// OAuth2 client secret.
pub const CLIENT_SECRET: &str = "zoo-client-secret";
/// The zip password of `/zip-csv-locked`.
pub const ZIP_PASSWORD: &str = "zoo-zip-password";

/// How the zoo behaves.
#[derive(Debug, Clone)]
pub struct ZooConfig {
    /// Records in the dataset.
    pub records: u64,
    /// Added to every response.
    pub latency: Duration,
}

impl Default for ZooConfig {
    fn default() -> Self {
        Self {
            records: 53,
            latency: Duration::ZERO,
        }
    }
}

struct Zoo {
    config: ZooConfig,
    requests: AtomicU64,
    tokens_issued: AtomicU64,
}

/// A running zoo server; stops when dropped.
pub struct ZooServer {
    addr: SocketAddr,
    state: Arc<Zoo>,
    stop: Option<oneshot::Sender<()>>,
}

const GROUPS: [&str; 3] = ["birds", "fish", "mammals"];

fn group(i: u64) -> &'static str {
    GROUPS[(i % 3) as usize]
}

/// One record of the dataset.
pub fn record(i: u64) -> Value {
    json!({
        "id": i,
        "name": format!("Animal {i}"),
        "group": group(i),
        "weight": (i as f64) * 1.5,
        "tags": (0..(i % 3)).map(|t| format!("t{t}")).collect::<Vec<_>>(),
        "habitat": {"zone": format!("Z{}", i % 4), "indoor": i.is_multiple_of(2)},
    })
}

/// A record as CSV gives it back: every field text, nested data left out.
pub fn csv_record(i: u64) -> Value {
    json!({"id": i.to_string(), "name": format!("Animal {i}"), "group": group(i)})
}

impl ZooServer {
    /// Binds 127.0.0.1 on a free port and serves in the background.
    pub async fn start(config: ZooConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Zoo {
            config,
            requests: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/offset", get(offset))
            .route("/page", get(page_number))
            .route("/page-index", get(page_index))
            .route("/has-more", get(has_more))
            .route("/cursor", get(cursor))
            .route("/cursor-body", post(cursor_body))
            .route("/next-url", get(next_url))
            .route("/link", get(link))
            .route("/header-token", get(header_token))
            .route("/single", get(single))
            .route("/ndjson", get(ndjson))
            .route("/csv", get(csv))
            .route("/zip-csv", get(zip_csv))
            .route("/zip-csv-locked", get(zip_csv_locked))
            .route("/form", post(form))
            .route("/basic", get(basic))
            .route("/api-key", get(api_key))
            .route("/oauth/token", post(oauth_token))
            .route("/oauth/data", get(oauth_data))
            .route("/parents", get(parents))
            .route("/parents/{id}/children", get(children))
            .route("/loop", get(looping))
            .route("/big", get(big))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The dataset every route serves.
    pub fn records(&self) -> Vec<Value> {
        (1..=self.state.config.records).map(record).collect()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// OAuth tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::Relaxed)
    }
}

impl Drop for ZooServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn arrive(zoo: &Zoo) {
    zoo.requests.fetch_add(1, Ordering::Relaxed);
    if !zoo.config.latency.is_zero() {
        tokio::time::sleep(zoo.config.latency).await;
    }
}

/// Records `from..from+n` (1-based ids), clipped to the dataset.
fn slice(zoo: &Zoo, from: u64, n: u64) -> Vec<Value> {
    let total = zoo.config.records;
    (from..from.saturating_add(n))
        .filter(|i| *i >= 1 && *i <= total)
        .map(record)
        .collect()
}

fn json_ok(body: Value) -> Response {
    axum::Json(body).into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "unauthorized"})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct OffsetQ {
    offset: Option<u64>,
    limit: Option<u64>,
}

async fn offset(State(zoo): State<Arc<Zoo>>, Query(q): Query<OffsetQ>) -> Response {
    arrive(&zoo).await;
    let limit = q.limit.unwrap_or(10).min(20);
    json_ok(
        json!({"items": slice(&zoo, q.offset.unwrap_or(0) + 1, limit), "total": zoo.config.records}),
    )
}

#[derive(Deserialize)]
struct PageQ {
    page: Option<u64>,
    size: Option<u64>,
}

async fn page_number(State(zoo): State<Arc<Zoo>>, Query(q): Query<PageQ>) -> Response {
    arrive(&zoo).await;
    let size = q.size.unwrap_or(10);
    let page = q.page.unwrap_or(1).max(1);
    json_ok(
        json!({"results": slice(&zoo, (page - 1) * size + 1, size), "pages": zoo.config.records.div_ceil(size)}),
    )
}

#[derive(Deserialize)]
struct IndexQ {
    p: Option<u64>,
    n: Option<u64>,
}

async fn page_index(State(zoo): State<Arc<Zoo>>, Query(q): Query<IndexQ>) -> Response {
    arrive(&zoo).await;
    let n = q.n.unwrap_or(10);
    json_ok(Value::Array(slice(&zoo, q.p.unwrap_or(0) * n + 1, n)))
}

async fn has_more(State(zoo): State<Arc<Zoo>>, Query(q): Query<PageQ>) -> Response {
    arrive(&zoo).await;
    let size = q.size.unwrap_or(10);
    let page = q.page.unwrap_or(1).max(1);
    let from = (page - 1) * size + 1;
    json_ok(json!({"data": slice(&zoo, from, size), "has_more": from + size <= zoo.config.records}))
}

#[derive(Deserialize)]
struct CursorQ {
    after: Option<String>,
    limit: Option<u64>,
}

fn cursor_page(zoo: &Zoo, after: Option<&str>, limit: u64) -> (Vec<Value>, Option<String>) {
    let from = after
        .and_then(|a| a.strip_prefix("c-"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let items = slice(zoo, from, limit);
    let last = from + items.len() as u64 - 1;
    let next = (last < zoo.config.records && !items.is_empty()).then(|| format!("c-{last}"));
    (items, next)
}

async fn cursor(State(zoo): State<Arc<Zoo>>, Query(q): Query<CursorQ>) -> Response {
    arrive(&zoo).await;
    let (items, next) = cursor_page(&zoo, q.after.as_deref(), q.limit.unwrap_or(10));
    json_ok(json!({"data": items, "paging": {"next_cursor": next}}))
}

async fn cursor_body(State(zoo): State<Arc<Zoo>>, body: Bytes) -> Response {
    arrive(&zoo).await;
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    if body["filter"]["kind"] != "all" {
        return (StatusCode::BAD_REQUEST, "body.filter.kind must be all").into_response();
    }
    let (items, next) = cursor_page(
        &zoo,
        body["page"]["cursor"].as_str(),
        body["page"]["size"].as_u64().unwrap_or(10),
    );
    json_ok(json!({"data": items, "cursor": {"next": next}}))
}

#[derive(Deserialize)]
struct StartQ {
    start: Option<u64>,
}

async fn next_url(State(zoo): State<Arc<Zoo>>, Query(q): Query<StartQ>) -> Response {
    arrive(&zoo).await;
    let start = q.start.unwrap_or(1);
    let items = slice(&zoo, start, 7);
    let next = start + 7;
    let mut body = json!({"value": items});
    if next <= zoo.config.records {
        // Relative, as many APIs give them.
        body["@odata.nextLink"] = json!(format!("/next-url?start={next}"));
    }
    json_ok(body)
}

async fn link(State(zoo): State<Arc<Zoo>>, Query(q): Query<PageQ>) -> Response {
    arrive(&zoo).await;
    let page = q.page.unwrap_or(1).max(1);
    let mut response = json_ok(Value::Array(slice(&zoo, (page - 1) * 9 + 1, 9)));
    let mut links = vec![format!("</link?page=1>; rel=\"first\"")];
    if page * 9 < zoo.config.records {
        links.push(format!("</link?page={}>; rel=\"next\"", page + 1));
    }
    if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
        response.headers_mut().insert(header::LINK, v);
    }
    response
}

async fn header_token(State(zoo): State<Arc<Zoo>>, headers: HeaderMap) -> Response {
    arrive(&zoo).await;
    let from = headers
        .get("x-continuation")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("from-"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1);
    let mut response = json_ok(json!({"rows": slice(&zoo, from, 11)}));
    if from + 11 <= zoo.config.records
        && let Ok(v) = HeaderValue::from_str(&format!("from-{}", from + 11))
    {
        response.headers_mut().insert("x-continuation", v);
    }
    response
}

async fn single(State(zoo): State<Arc<Zoo>>) -> Response {
    arrive(&zoo).await;
    json_ok(json!({"data": slice(&zoo, 1, zoo.config.records)}))
}

async fn ndjson(State(zoo): State<Arc<Zoo>>) -> Response {
    arrive(&zoo).await;
    let body: String = slice(&zoo, 1, zoo.config.records)
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn csv_text(zoo: &Zoo) -> String {
    let mut out = String::from("id,name,group\r\n");
    for i in 1..=zoo.config.records {
        out.push_str(&format!("{i},Animal {i},{}\r\n", group(i)));
    }
    out
}

async fn csv(State(zoo): State<Arc<Zoo>>) -> Response {
    arrive(&zoo).await;
    ([(header::CONTENT_TYPE, "text/csv")], csv_text(&zoo)).into_response()
}

fn zipped(text: &str, password: Option<&str>) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let mut options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        if let Some(p) = password {
            options = options.with_aes_encryption(zip::AesMode::Aes256, p);
        }
        let _ = zip.start_file("animals.csv", options);
        let _ = zip.write_all(text.as_bytes());
        let _ = zip.finish();
    }
    buf.into_inner()
}

async fn zip_csv(State(zoo): State<Arc<Zoo>>) -> Response {
    arrive(&zoo).await;
    (
        [(header::CONTENT_TYPE, "application/zip")],
        zipped(&csv_text(&zoo), None),
    )
        .into_response()
}

async fn zip_csv_locked(State(zoo): State<Arc<Zoo>>) -> Response {
    arrive(&zoo).await;
    (
        [(header::CONTENT_TYPE, "application/zip")],
        zipped(&csv_text(&zoo), Some(ZIP_PASSWORD)),
    )
        .into_response()
}

async fn form(State(zoo): State<Arc<Zoo>>, body: Bytes) -> Response {
    arrive(&zoo).await;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    if !pairs.contains(&("kind".to_owned(), "all".to_owned())) {
        return (StatusCode::BAD_REQUEST, "form field kind=all missing").into_response();
    }
    json_ok(json!({"data": slice(&zoo, 1, zoo.config.records)}))
}

async fn basic(State(zoo): State<Arc<Zoo>>, headers: HeaderMap) -> Response {
    arrive(&zoo).await;
    let expected = format!("Basic {}", base64_basic(BASIC_USER, BASIC_PASSWORD));
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return unauthorized();
    }
    json_ok(json!({"data": slice(&zoo, 1, zoo.config.records)}))
}

/// `user:password` in standard base64, as HTTP basic authentication sends it.
fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[derive(Deserialize)]
struct KeyQ {
    api_key: Option<String>,
}

async fn api_key(
    State(zoo): State<Arc<Zoo>>,
    headers: HeaderMap,
    Query(q): Query<KeyQ>,
) -> Response {
    arrive(&zoo).await;
    let in_header = headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(API_KEY);
    if !in_header && q.api_key.as_deref() != Some(API_KEY) {
        return unauthorized();
    }
    json_ok(json!({"data": slice(&zoo, 1, zoo.config.records)}))
}

async fn oauth_token(State(zoo): State<Arc<Zoo>>, body: Bytes) -> Response {
    arrive(&zoo).await;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("grant_type") != Some("client_credentials")
        || get("client_id") != Some(CLIENT_ID)
        || get("client_secret") != Some(CLIENT_SECRET)
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": "invalid_client", "error_description": "bad client credentials"}),
            ),
        )
            .into_response();
    }
    let n = zoo.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    json_ok(
        json!({"access_token": format!("zoo-token-{n}"), "token_type": "bearer", "expires_in": 3600}),
    )
}

async fn oauth_data(State(zoo): State<Arc<Zoo>>, headers: HeaderMap) -> Response {
    arrive(&zoo).await;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !auth.starts_with("Bearer zoo-token-") {
        return unauthorized();
    }
    json_ok(json!({"data": slice(&zoo, 1, zoo.config.records)}))
}

/// Parents: one per group of ten records.
async fn parents(State(zoo): State<Arc<Zoo>>) -> Response {
    arrive(&zoo).await;
    let groups = zoo.config.records.div_ceil(10);
    json_ok(
        json!({"parents": (0..groups).map(|g| json!({"gid": g, "label": format!("group {g}")})).collect::<Vec<_>>()}),
    )
}

async fn children(
    State(zoo): State<Arc<Zoo>>,
    Path(gid): Path<u64>,
    Query(q): Query<OffsetQ>,
) -> Response {
    arrive(&zoo).await;
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(4);
    let from = gid * 10 + 1 + offset;
    let end = (gid * 10 + 10).min(zoo.config.records);
    let items: Vec<Value> = (from..=end).take(limit as usize).map(record).collect();
    json_ok(json!({"items": items}))
}

async fn looping(State(zoo): State<Arc<Zoo>>) -> Response {
    arrive(&zoo).await;
    json_ok(json!({"data": slice(&zoo, 1, 5), "next": "/loop"}))
}

#[derive(Deserialize)]
struct BigQ {
    count: Option<u64>,
}

/// A large export streamed as one JSON document: `{"export": {"rows": [...]}, "count": N}`.
async fn big(State(zoo): State<Arc<Zoo>>, Query(q): Query<BigQ>) -> Response {
    arrive(&zoo).await;
    let count = q.count.unwrap_or(zoo.config.records);
    let chunks = futures::stream::iter((0..count.div_ceil(1000)).map(move |c| {
        let mut out = Vec::with_capacity(400_000);
        if c == 0 {
            out.extend_from_slice(b"{\"export\": {\"rows\": [");
        }
        for i in (c * 1000 + 1)..=((c + 1) * 1000).min(count) {
            if i > 1 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut out, &record(i));
        }
        if (c + 1) * 1000 >= count {
            out.extend_from_slice(format!("]}}, \"count\": {count}}}").as_bytes());
        }
        Ok::<_, std::io::Error>(Bytes::from(out))
    }));
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response()
}
