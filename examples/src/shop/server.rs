//! The example shop's HTTP API, served on 127.0.0.1.
//!
//! `GET /api/{resource}?offset=O&limit=L` (or `?page=P&per_page=L`, 0-based pages) answers
//! `{"data": [...], "meta": {"total": T, "offset": O, "limit": L}}` with `limit`
//! capped at `max_limit`. `GET /api` lists the resources and their totals.
//! `GET /api/{resource}/export` streams the whole resource as one response
//! (`?format=ndjson` for one record per line).
//! Optional bearer-token auth, added latency and injected faults make it a test
//! server as well as a demo.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::data::{Dataset, Resource};

/// One injected fault: requests for `resource` at `offset` fail with `status`
/// the first `times` times, then succeed.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The resource whose page fails.
    pub resource: Resource,
    /// The page's offset.
    pub offset: u64,
    /// The status to answer with (e.g. 503, 429).
    pub status: u16,
    /// How many times to fail before answering normally.
    pub times: u32,
    /// A `Retry-After` value in seconds to send with the failure.
    pub retry_after: Option<u64>,
}

/// How the shop API behaves.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// Number of orders; the other resources scale from it (see [`Dataset`]).
    pub orders: u64,
    /// Largest page the API serves, whatever `limit` asks for.
    pub max_limit: u64,
    /// Require `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Added to every response.
    pub latency: Duration,
    /// Injected failures.
    pub faults: Vec<Fault>,
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            orders: 10_000,
            max_limit: 1000,
            token: None,
            latency: Duration::ZERO,
            faults: Vec::new(),
        }
    }
}

struct ShopState {
    dataset: Dataset,
    config: ShopConfig,
    remaining_faults: Mutex<Vec<u32>>,
    requests: AtomicU64,
}

/// A running shop API; stops when dropped or on [`ShopServer::shutdown`].
pub struct ShopServer {
    addr: SocketAddr,
    state: Arc<ShopState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<u64>,
    limit: Option<u64>,
    /// A 0-based page index (with `per_page`), as `cute` pages.
    page: Option<u64>,
    per_page: Option<u64>,
}

impl ShopServer {
    /// Binds `addr` (use port 0 for a free port) and serves in the background.
    pub async fn start(config: ShopConfig, addr: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ShopState {
            dataset: Dataset::new(config.orders),
            remaining_faults: Mutex::new(config.faults.iter().map(|f| f.times).collect()),
            config,
            requests: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/api", get(index))
            .route("/api/{resource}", get(page))
            .route("/api/{resource}/export", get(export))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "shop api stopped");
            }
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The dataset being served.
    pub fn dataset(&self) -> Dataset {
        self.state.dataset
    }

    /// Requests received so far (failed ones included).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ShopServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        serde_json::json!({ "error": message })
            .to_string()
            .into_bytes(),
    )
}

async fn admit(state: &ShopState, headers: &HeaderMap) -> Option<Response> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    if let Some(token) = &state.config.token {
        let expected = format!("Bearer {token}");
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token",
            ));
        }
    }
    None
}

async fn index(State(state): State<Arc<ShopState>>, headers: HeaderMap) -> Response {
    if let Some(denied) = admit(&state, &headers).await {
        return denied;
    }
    let resources: serde_json::Map<String, serde_json::Value> = Resource::ALL
        .iter()
        .map(|r| (r.name().to_owned(), state.dataset.total(*r).into()))
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::json!({ "resources": resources })
            .to_string()
            .into_bytes(),
    )
}

async fn page(
    State(state): State<Arc<ShopState>>,
    Path(resource): Path<String>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = admit(&state, &headers).await {
        return denied;
    }
    let Some(resource) = Resource::from_name(&resource) else {
        return error(StatusCode::NOT_FOUND, "no such resource");
    };
    let limit = query
        .limit
        .or(query.per_page)
        .unwrap_or(100)
        .clamp(1, state.config.max_limit);
    let offset = match query.page {
        Some(page) => page * limit,
        None => query.offset.unwrap_or(0),
    };
    if let Some(fault) = take_fault(&state, resource, offset) {
        let status =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = error(status, "injected fault");
        if let Some(secs) = fault.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let total = state.dataset.total(resource);
    let mut body = Vec::with_capacity(64 * 1024);
    body.extend_from_slice(b"{\"data\":");
    if let Err(e) = state.dataset.write_page(resource, offset, limit, &mut body) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    body.extend_from_slice(
        format!(",\"meta\":{{\"total\":{total},\"offset\":{offset},\"limit\":{limit}}}}}")
            .as_bytes(),
    );
    json_response(StatusCode::OK, body)
}

/// The whole resource as one response, streamed as it is generated:
/// `{"data": [...], "meta": {"total": N}}` (JSON) or one record per line
/// (`?format=ndjson`). No page ever sits in memory, however large the resource.
async fn export(
    State(state): State<Arc<ShopState>>,
    Path(resource): Path<String>,
    Query(query): Query<ExportQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = admit(&state, &headers).await {
        return denied;
    }
    let Some(resource) = Resource::from_name(&resource) else {
        return error(StatusCode::NOT_FOUND, "no such resource");
    };
    let ndjson = query.format.as_deref() == Some("ndjson");
    let dataset = state.dataset;
    let total = dataset.total(resource);
    let chunks = total.div_ceil(1000).max(1);
    let body = futures::stream::iter((0..chunks).map(move |c| {
        let mut out = Vec::with_capacity(512 * 1024);
        if c == 0 && !ndjson {
            out.extend_from_slice(b"{\"data\":[");
        }
        for i in c * 1000..((c + 1) * 1000).min(total) {
            if !ndjson && i > 0 {
                out.push(b',');
            }
            dataset.write_record(resource, i, &mut out)?;
            if ndjson {
                out.push(b'\n');
            }
        }
        if c + 1 == chunks && !ndjson {
            out.extend_from_slice(format!("],\"meta\":{{\"total\":{total}}}}}").as_bytes());
        }
        Ok::<_, serde_json::Error>(axum::body::Bytes::from(out))
    }));
    let content_type = if ndjson {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

fn take_fault(state: &ShopState, resource: Resource, offset: u64) -> Option<Fault> {
    let mut remaining = state
        .remaining_faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (i, fault) in state.config.faults.iter().enumerate() {
        if fault.resource == resource && fault.offset == offset && remaining[i] > 0 {
            remaining[i] -= 1;
            return Some(fault.clone());
        }
    }
    None
}
