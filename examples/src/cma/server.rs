//! The emulator's HTTP server: routes, auth, rate limiting, faults, counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::model::{ApiError, Environment, check_publishable, clean_fields, link};
use super::query::EntryQuery;

/// One injected fault: requests whose method matches (if given) and whose path
/// contains `path_contains` fail with `status` the first `times` times.
#[derive(Debug, Clone)]
pub struct CmaFault {
    /// HTTP method to match (`PUT`, ...), or any.
    pub method: Option<String>,
    /// Substring of the path to match.
    pub path_contains: String,
    /// Status to answer (429 gets rate-limit headers and `Reset: 1`).
    pub status: u16,
    /// How many matching requests fail.
    pub times: u32,
}

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct CmaConfig {
    /// The management token clients must send as `Authorization: Bearer`.
    pub token: String,
    /// The space id.
    pub space: String,
    /// The environment id (`master` by default; others are created on demand).
    pub environment: String,
    /// Locales: (code, is default). The default first.
    pub locales: Vec<(String, bool)>,
    /// Content types to start with (CMA JSON: `sys.id`, `name`, `displayField`, `fields`).
    pub content_types: Vec<Value>,
    /// Requests per second allowed (token bucket of this size), announced in the
    /// `X-Contentful-RateLimit-*` headers; `None`: unlimited and unannounced
    /// (clients then keep to the API's documented default of 7 per second).
    pub rate_limit: Option<u32>,
    /// Added to every response.
    pub latency: Duration,
    /// Injected failures.
    pub faults: Vec<CmaFault>,
    /// Largest entry collection answered: bigger ones are refused with `400
    /// Response size too big`, as the API does above 7 MB (7,340,032 bytes).
    pub max_response_bytes: usize,
}

impl Default for CmaConfig {
    fn default() -> Self {
        Self {
            token: "emulator-token".to_owned(),
            space: "space1".to_owned(),
            environment: "master".to_owned(),
            locales: vec![("en-US".to_owned(), true)],
            content_types: Vec::new(),
            rate_limit: None,
            latency: Duration::ZERO,
            faults: Vec::new(),
            max_response_bytes: 7_340_032,
        }
    }
}

/// Requests the emulator served, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CmaCounts {
    /// Every request that reached the emulator.
    pub requests: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// GET requests.
    pub reads: u64,
    /// Requests that change entries (create, update, publish, unpublish, delete, bulk actions).
    pub writes: u64,
    /// Entries published (single or in bulk).
    pub published: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    published: AtomicU64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct Cma {
    config: CmaConfig,
    envs: Mutex<BTreeMap<String, Environment>>,
    counters: Counters,
    bucket: Mutex<Bucket>,
    faults_left: Mutex<Vec<u32>>,
    ids: AtomicU64,
}

/// A running emulator; stops when dropped.
pub struct CmaServer {
    addr: SocketAddr,
    state: Arc<Cma>,
    stop: Option<oneshot::Sender<()>>,
}

impl CmaServer {
    /// Binds `addr` (port 0 for a free port) and serves in the background.
    pub async fn start(config: CmaConfig, addr: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut env = Environment {
            locales: config.locales.clone(),
            ..Environment::default()
        };
        for ct in &config.content_types {
            let id = ct["sys"]["id"].as_str().unwrap_or_default().to_owned();
            env.content_types
                .insert(id.clone(), content_type_json(&config, &id, ct, 1));
        }
        let mut envs = BTreeMap::new();
        envs.insert(config.environment.clone(), env);
        let state = Arc::new(Cma {
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.rate_limit.unwrap_or(0)),
                last: Instant::now(),
            }),
            faults_left: Mutex::new(config.faults.iter().map(|f| f.times).collect()),
            config,
            envs: Mutex::new(envs),
            counters: Counters::default(),
            ids: AtomicU64::new(0),
        });
        let env_routes = Router::new()
            .route("/", get(environment))
            .route("/locales", get(locales))
            .route("/content_types", get(list_content_types))
            .route(
                "/content_types/{id}",
                get(get_content_type).put(put_content_type),
            )
            .route("/content_types/{id}/published", put(activate_content_type))
            .route("/entries", get(list_entries).post(create_entry))
            .route(
                "/entries/{id}",
                get(get_entry).put(put_entry).delete(delete_entry),
            )
            .route(
                "/entries/{id}/published",
                put(publish_entry).delete(unpublish_entry),
            )
            .route(
                "/entries/{id}/archived",
                put(archive_entry).delete(unarchive_entry),
            )
            .route("/bulk_actions/publish", post(bulk_publish))
            .route("/bulk_actions/actions/{id}", get(get_bulk_action));
        let app = Router::new()
            .route("/spaces", get(spaces))
            .route("/spaces/{space}", get(space))
            .route("/spaces/{space}/environments", get(environments))
            .route("/users/me", get(me))
            .route("/_emulator/counts", get(counts))
            .nest("/spaces/{space}/environments/{env}", env_routes)
            .fallback(|| async { error_response(&ApiError::not_found()) })
            .layer(middleware::from_fn_with_state(state.clone(), gate))
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

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What was served so far.
    pub fn counts(&self) -> CmaCounts {
        let c = &self.state.counters;
        CmaCounts {
            requests: c.requests.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
        }
    }

    /// A copy of every entry of the environment, by id.
    pub fn entries(&self) -> BTreeMap<String, Value> {
        let envs = self
            .state
            .envs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        envs.get(&self.state.config.environment)
            .map(|e| e.entries.clone())
            .unwrap_or_default()
    }

    /// Creates an entry directly (as an editor would), with CMA-shaped `fields`.
    pub fn seed_entry(
        &self,
        content_type: &str,
        id: &str,
        fields: Value,
    ) -> Result<Value, ApiError> {
        let mut envs = self
            .state
            .envs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let env = envs
            .get_mut(&self.state.config.environment)
            .ok_or_else(ApiError::not_found)?;
        create_in(
            &self.state,
            env,
            id.to_owned(),
            content_type,
            &json!({ "fields": fields }),
        )
    }

    /// Changes an entry's fields directly (as an editor would), bumping its version.
    pub fn edit_entry(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let mut envs = self
            .state
            .envs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = envs
            .get_mut(&self.state.config.environment)
            .and_then(|e| e.entries.get_mut(id))
        {
            edit(entry);
            let v = entry["sys"]["version"].as_u64().unwrap_or(1);
            entry["sys"]["version"] = json!(v + 1);
        }
    }
}

impl Drop for CmaServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = secs.as_millis() % 1000;
    let s = secs.as_secs();
    let days = (s / 86_400) as i64;
    let rem = s % 86_400;
    let (y, m, d) = crate::time::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn content_type_json(config: &CmaConfig, id: &str, body: &Value, version: u64) -> Value {
    json!({
        "sys": {
            "type": "ContentType", "id": id, "version": version, "publishedVersion": version,
            "space": link("Space", &config.space), "environment": link("Environment", &config.environment),
            "createdAt": now(), "updatedAt": now(),
        },
        "name": body["name"].as_str().unwrap_or(id),
        "displayField": body["displayField"].clone(),
        "description": body["description"].clone(),
        "fields": body["fields"].clone(),
    })
}

fn error_response(err: &ApiError) -> Response {
    let mut body = json!({
        "sys": {"type": "Error", "id": err.id},
        "message": err.message,
        "requestId": format!("emulator-{}", fastish_id()),
    });
    if let Some(details) = &err.details {
        body["details"] = details.clone();
    }
    json_response(
        StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

fn fastish_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.contentful.management.v1+json"),
    );
    response
}

type ApiResult = Result<Response, ApiError>;

fn ok(body: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &body))
}

fn collection(total: usize, skip: usize, limit: usize, items: Vec<Value>) -> Value {
    json!({"sys": {"type": "Array"}, "total": total, "skip": skip, "limit": limit, "items": items})
}

/// Auth, faults, latency, the rate limit and its headers, counters.
async fn gate(State(cma): State<Arc<Cma>>, request: Request, next: Next) -> Response {
    let c = &cma.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    if !cma.config.latency.is_zero() {
        tokio::time::sleep(cma.config.latency).await;
    }
    let limit = cma.config.rate_limit;
    let remaining = match limit {
        None => None,
        Some(rate) => {
            let mut b = cma
                .bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let elapsed = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Some(Ok(b.tokens.floor() as u64))
            } else {
                let wait = ((1.0 - b.tokens) / f64::from(rate)).ceil().max(1.0) as u64;
                Some(Err(wait))
            }
        }
    };
    let mut response = match remaining {
        Some(Err(reset)) => {
            c.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut r = error_response(&ApiError::new(
                429,
                "RateLimitExceeded",
                "You have exceeded the rate limit of the Organization this Space belongs to by making too many API requests within a short timespan. Please wait a moment before trying the request again.",
            ));
            r.headers_mut()
                .insert("x-contentful-ratelimit-reset", HeaderValue::from(reset));
            r.headers_mut().insert(
                "x-contentful-ratelimit-second-remaining",
                HeaderValue::from(0u64),
            );
            r
        }
        _ => admitted(&cma, request, next).await,
    };
    if let Some(rate) = limit {
        let h = response.headers_mut();
        h.insert(
            "x-contentful-ratelimit-second-limit",
            HeaderValue::from(rate),
        );
        if let Some(Ok(left)) = remaining {
            h.insert(
                "x-contentful-ratelimit-second-remaining",
                HeaderValue::from(left),
            );
            h.insert("x-contentful-ratelimit-reset", HeaderValue::from(0u64));
        }
    }
    response
}

async fn admitted(cma: &Cma, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", cma.config.token);
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str()) {
        return error_response(&ApiError::new(
            401,
            "AccessTokenInvalid",
            "The access token you sent could not be found or is invalid.",
        ));
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    {
        let mut left = cma
            .faults_left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, f) in cma.config.faults.iter().enumerate() {
            let method_ok = f
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
            if method_ok && path.contains(&f.path_contains) && left[i] > 0 {
                left[i] -= 1;
                let id = match f.status {
                    429 => "RateLimitExceeded",
                    500 => "ServerError",
                    _ => "InjectedFault",
                };
                let mut r = error_response(&ApiError::new(f.status, id, "injected fault"));
                if f.status == 429 {
                    r.headers_mut()
                        .insert("x-contentful-ratelimit-reset", HeaderValue::from(1u64));
                    cma.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                return r;
            }
        }
    }
    if method == Method::GET {
        cma.counters.reads.fetch_add(1, Ordering::Relaxed);
    } else if path.contains("/entries") || path.contains("/bulk_actions") {
        cma.counters.writes.fetch_add(1, Ordering::Relaxed);
    }
    next.run(request).await
}

fn with_env<T>(
    cma: &Cma,
    space: &str,
    env: &str,
    f: impl FnOnce(&mut Environment) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    if space != cma.config.space {
        return Err(ApiError::not_found());
    }
    let mut envs = cma
        .envs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let environment = envs.get_mut(env).ok_or_else(ApiError::not_found)?;
    f(environment)
}

fn version_header(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get("x-contentful-version") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("X-Contentful-Version must be an integer")),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}")))
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let Some(q) = uri.query() else {
        return Vec::new();
    };
    reqwest::Url::parse(&format!("http://emulator/?{q}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

async fn spaces(State(cma): State<Arc<Cma>>) -> ApiResult {
    let space = space_json(&cma);
    ok(collection(1, 0, 100, vec![space]))
}

fn space_json(cma: &Cma) -> Value {
    json!({"sys": {"type": "Space", "id": cma.config.space, "version": 1}, "name": "Emulated space"})
}

async fn space(State(cma): State<Arc<Cma>>, Path(space): Path<String>) -> ApiResult {
    if space != cma.config.space {
        return Err(ApiError::not_found());
    }
    ok(space_json(&cma))
}

async fn environments(State(cma): State<Arc<Cma>>, Path(space): Path<String>) -> ApiResult {
    if space != cma.config.space {
        return Err(ApiError::not_found());
    }
    let envs = cma
        .envs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let items: Vec<Value> = envs
        .keys()
        .map(|id| json!({"sys": {"type": "Environment", "id": id, "space": link("Space", &cma.config.space)}, "name": id}))
        .collect();
    ok(collection(items.len(), 0, 100, items))
}

async fn environment(
    State(cma): State<Arc<Cma>>,
    Path((space, env)): Path<(String, String)>,
) -> ApiResult {
    with_env(&cma, &space, &env, |_| Ok(()))?;
    ok(
        json!({"sys": {"type": "Environment", "id": env, "space": link("Space", &cma.config.space)}, "name": env}),
    )
}

/// The emulator's request counters (not part of the real API; for benchmarks).
async fn counts(State(cma): State<Arc<Cma>>) -> ApiResult {
    let c = &cma.counters;
    ok(json!({
        "requests": c.requests.load(Ordering::Relaxed),
        "rateLimited": c.rate_limited.load(Ordering::Relaxed),
        "reads": c.reads.load(Ordering::Relaxed),
        "writes": c.writes.load(Ordering::Relaxed),
        "published": c.published.load(Ordering::Relaxed),
    }))
}

async fn me() -> ApiResult {
    ok(
        json!({"sys": {"type": "User", "id": "emulator-user"}, "firstName": "Emulator", "lastName": "User"}),
    )
}

async fn locales(
    State(cma): State<Arc<Cma>>,
    Path((space, env)): Path<(String, String)>,
) -> ApiResult {
    let items = with_env(&cma, &space, &env, |e| {
        let default = e.default_locale().to_owned();
        Ok(e.locales
            .iter()
            .enumerate()
            .map(|(i, (code, is_default))| {
                json!({
                    "sys": {"type": "Locale", "id": format!("locale-{i}"), "version": 1},
                    "name": code, "code": code, "internal_code": code,
                    "fallbackCode": if *is_default { Value::Null } else { json!(default) },
                    "default": is_default, "optional": !is_default,
                    "contentDeliveryApi": true, "contentManagementApi": true,
                })
            })
            .collect::<Vec<_>>())
    })?;
    ok(collection(items.len(), 0, 100, items))
}

async fn list_content_types(
    State(cma): State<Arc<Cma>>,
    Path((space, env)): Path<(String, String)>,
) -> ApiResult {
    let items = with_env(&cma, &space, &env, |e| {
        Ok(e.content_types.values().cloned().collect::<Vec<_>>())
    })?;
    ok(collection(items.len(), 0, 1000, items))
}

async fn get_content_type(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> ApiResult {
    ok(with_env(&cma, &space, &env, |e| {
        e.content_type(&id).cloned().ok_or_else(ApiError::not_found)
    })?)
}

async fn put_content_type(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let version = version_header(&headers)?;
    let (ct, created) = with_env(&cma, &space, &env, |e| {
        let current = e
            .content_types
            .get(&id)
            .and_then(|c| c["sys"]["version"].as_u64());
        match (current, version) {
            (Some(cur), Some(v)) if cur != v => return Err(ApiError::version_mismatch()),
            (Some(_), None) => {
                return Err(ApiError::new(
                    409,
                    "VersionMismatch",
                    "Please pass sys.version as HTTP header \"X-Contentful-Version\"",
                ));
            }
            _ => {}
        }
        let ct = content_type_json(&cma.config, &id, &body, current.map_or(1, |v| v + 1));
        e.content_types.insert(id.clone(), ct.clone());
        Ok((ct, current.is_none()))
    })?;
    Ok(json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &ct,
    ))
}

async fn activate_content_type(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> ApiResult {
    ok(with_env(&cma, &space, &env, |e| {
        let ct = e
            .content_types
            .get_mut(&id)
            .ok_or_else(ApiError::not_found)?;
        let v = ct["sys"]["version"].as_u64().unwrap_or(1);
        ct["sys"]["publishedVersion"] = json!(v);
        ct["sys"]["version"] = json!(v + 1);
        Ok(ct.clone())
    })?)
}

async fn list_entries(
    State(cma): State<Arc<Cma>>,
    Path((space, env)): Path<(String, String)>,
    uri: Uri,
) -> ApiResult {
    let query = EntryQuery::parse(&query_pairs(&uri))?;
    let body = with_env(&cma, &space, &env, |e| {
        if let Some(ct) = &query.content_type
            && !e.content_types.contains_key(ct)
        {
            return Err(ApiError::invalid_query(format!(
                "Unknown content type: {ct}"
            )));
        }
        let default = e.default_locale().to_owned();
        let (total, items) = query.run(e.entries.values().collect(), &default);
        Ok(collection(total, query.skip, query.limit, items))
    })?;
    let max = cma.config.max_response_bytes;
    if body.to_string().len() > max {
        return Err(ApiError::bad_request(format!(
            "Response size too big. Maximum allowed response size: {max}B."
        )));
    }
    ok(body)
}

async fn get_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> ApiResult {
    ok(with_env(&cma, &space, &env, |e| {
        e.entries.get(&id).cloned().ok_or_else(ApiError::not_found)
    })?)
}

fn new_id(cma: &Cma) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // SplitMix64 over a counter: unique, deterministic, random-looking ids.
    let mut state = cma.ids.fetch_add(1, Ordering::Relaxed);
    (0..22)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ALPHABET[((z ^ (z >> 31)) % 62) as usize] as char
        })
        .collect()
}

fn create_in(
    cma: &Cma,
    e: &mut Environment,
    id: String,
    ct_id: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || id.is_empty()
        || id.len() > 64
    {
        return Err(ApiError::bad_request(format!("Invalid entry id '{id}'")));
    }
    let ct = e.content_type(ct_id).cloned().ok_or_else(|| {
        ApiError::new(
            422,
            "UnknownContentType",
            format!("Unknown content type {ct_id}"),
        )
    })?;
    let fields = clean_fields(e, &ct, &body["fields"])?;
    let at = now();
    let entry = json!({
        "metadata": metadata(&body["metadata"]),
        "sys": {
            "type": "Entry", "id": id, "version": 1, "createdAt": at, "updatedAt": at,
            "space": link("Space", &cma.config.space), "environment": link("Environment", &cma.config.environment),
            "contentType": link("ContentType", ct_id), "automationTags": [],
            "createdBy": link("User", "emulator-user"), "updatedBy": link("User", "emulator-user"),
        },
        "fields": fields,
    });
    e.entries.insert(id, entry.clone());
    Ok(entry)
}

fn metadata(given: &Value) -> Value {
    if given.is_object() {
        json!({"tags": given["tags"].as_array().cloned().unwrap_or_default(), "concepts": given["concepts"].as_array().cloned().unwrap_or_default()})
    } else {
        json!({"tags": [], "concepts": []})
    }
}

fn content_type_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-contentful-content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn create_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let ct = content_type_header(&headers).ok_or_else(|| {
        ApiError::bad_request(
            "You should provide a content type in X-Contentful-Content-Type request header.",
        )
    })?;
    let id = new_id(&cma);
    let entry = with_env(&cma, &space, &env, |e| create_in(&cma, e, id, &ct, &body))?;
    Ok(json_response(StatusCode::CREATED, &entry))
}

async fn put_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let version = version_header(&headers)?;
    let ct_header = content_type_header(&headers);
    let (entry, created) = with_env(&cma, &space, &env, |e| {
        let Some(existing) = e.entries.get(&id).cloned() else {
            let ct = ct_header.clone().ok_or_else(|| {
                ApiError::bad_request("You should provide a content type in X-Contentful-Content-Type request header.")
            })?;
            if version.is_some_and(|v| v != 0) {
                return Err(ApiError::version_mismatch());
            }
            return create_in(&cma, e, id.clone(), &ct, &body).map(|entry| (entry, true));
        };
        let current = existing["sys"]["version"].as_u64().unwrap_or(1);
        match version {
            None => {
                return Err(ApiError::new(
                    409,
                    "VersionMismatch",
                    "Please pass sys.version as HTTP header \"X-Contentful-Version\"",
                ));
            }
            Some(v) if v != current => return Err(ApiError::version_mismatch()),
            Some(_) => {}
        }
        let ct_id = existing["sys"]["contentType"]["sys"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let ct = e
            .content_type(&ct_id)
            .cloned()
            .ok_or_else(ApiError::not_found)?;
        let fields = clean_fields(e, &ct, &body["fields"])?;
        let mut entry = existing;
        entry["fields"] = Value::Object(fields);
        entry["metadata"] = metadata(&body["metadata"]);
        entry["sys"]["version"] = json!(current + 1);
        entry["sys"]["updatedAt"] = json!(now());
        e.entries.insert(id.clone(), entry.clone());
        Ok((entry, false))
    })?;
    Ok(json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &entry,
    ))
}

fn publish_in(
    cma: &Cma,
    e: &mut Environment,
    id: &str,
    version: Option<u64>,
) -> Result<Value, ApiError> {
    let entry = e.entries.get(id).cloned().ok_or_else(ApiError::not_found)?;
    let current = entry["sys"]["version"].as_u64().unwrap_or(1);
    if version.is_some_and(|v| v != current) {
        return Err(ApiError::version_mismatch());
    }
    check_publishable(e, &entry)?;
    let mut entry = entry;
    let at = now();
    let sys = &mut entry["sys"];
    sys["publishedVersion"] = json!(current);
    sys["version"] = json!(current + 1);
    sys["publishedAt"] = json!(at);
    if sys["firstPublishedAt"].is_null() {
        sys["firstPublishedAt"] = json!(at);
    }
    sys["publishedCounter"] = json!(sys["publishedCounter"].as_u64().unwrap_or(0) + 1);
    sys["publishedBy"] = link("User", "emulator-user");
    e.entries.insert(id.to_owned(), entry.clone());
    cma.counters.published.fetch_add(1, Ordering::Relaxed);
    Ok(entry)
}

async fn publish_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let version = version_header(&headers)?;
    ok(with_env(&cma, &space, &env, |e| {
        publish_in(&cma, e, &id, version)
    })?)
}

async fn unpublish_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> ApiResult {
    ok(with_env(&cma, &space, &env, |e| {
        let entry = e.entries.get_mut(&id).ok_or_else(ApiError::not_found)?;
        if entry["sys"]["publishedVersion"].is_null() {
            return Err(ApiError::bad_request("Not published"));
        }
        let sys = entry["sys"]
            .as_object_mut()
            .ok_or_else(ApiError::not_found)?;
        sys.remove("publishedVersion");
        sys.remove("publishedAt");
        sys.remove("publishedBy");
        let v = sys["version"].as_u64().unwrap_or(1);
        sys.insert("version".into(), json!(v + 1));
        Ok(entry.clone())
    })?)
}

async fn delete_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    with_env(&cma, &space, &env, |e| {
        let entry = e.entries.get(&id).ok_or_else(ApiError::not_found)?;
        if !entry["sys"]["publishedVersion"].is_null() {
            return Err(ApiError::bad_request("Cannot delete published"));
        }
        e.entries.remove(&id);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn archive_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> ApiResult {
    ok(with_env(&cma, &space, &env, |e| {
        let entry = e.entries.get_mut(&id).ok_or_else(ApiError::not_found)?;
        let v = entry["sys"]["version"].as_u64().unwrap_or(1);
        entry["sys"]["archivedVersion"] = json!(v);
        entry["sys"]["archivedAt"] = json!(now());
        entry["sys"]["version"] = json!(v + 1);
        Ok(entry.clone())
    })?)
}

async fn unarchive_entry(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> ApiResult {
    ok(with_env(&cma, &space, &env, |e| {
        let entry = e.entries.get_mut(&id).ok_or_else(ApiError::not_found)?;
        if let Some(sys) = entry["sys"].as_object_mut() {
            sys.remove("archivedVersion");
            sys.remove("archivedAt");
            let v = sys["version"].as_u64().unwrap_or(1);
            sys.insert("version".into(), json!(v + 1));
        }
        Ok(entry.clone())
    })?)
}

async fn bulk_publish(
    State(cma): State<Arc<Cma>>,
    Path((space, env)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let items = body["entities"]["items"]
        .as_array()
        .cloned()
        .ok_or_else(|| ApiError::bad_request("entities.items must be an array of links"))?;
    if items.len() > 200 {
        return Err(ApiError::bad_request(
            "A bulk action can hold at most 200 entities",
        ));
    }
    let id = new_id(&cma);
    let at = now();
    let action = json!({
        "sys": {
            "type": "BulkAction", "id": id, "status": "created", "createdAt": at, "updatedAt": at,
            "space": link("Space", &cma.config.space), "environment": link("Environment", &env),
            "createdBy": link("User", "emulator-user"),
        },
        "action": "publish",
        "payload": {"entities": {"sys": {"type": "Array"}, "items": items}},
    });
    with_env(&cma, &space, &env, |e| {
        e.bulk_actions.insert(id.clone(), action.clone());
        Ok(())
    })?;
    let state = cma.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = with_env(&state, &space, &env, |e| {
            run_bulk_publish(&state, e, &id);
            Ok(())
        });
    });
    Ok(json_response(StatusCode::CREATED, &action))
}

/// Publishes every item or none: items are checked first (existence, version,
/// required fields); any failure fails the action with the errors in details.
fn run_bulk_publish(cma: &Cma, e: &mut Environment, action_id: &str) {
    let Some(action) = e.bulk_actions.get(action_id).cloned() else {
        return;
    };
    let items = action["payload"]["entities"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut errors = Vec::new();
    for item in &items {
        let id = item["sys"]["id"].as_str().unwrap_or_default();
        let version = item["sys"]["version"].as_u64();
        let problem = match e.entries.get(id) {
            None => Some(ApiError::not_found()),
            Some(entry) if version.is_some_and(|v| entry["sys"]["version"].as_u64() != Some(v)) => {
                Some(ApiError::version_mismatch())
            }
            Some(entry) => check_publishable(e, entry).err(),
        };
        if let Some(p) = problem {
            errors.push(json!({"entity": item, "error": {"sys": {"type": "Error", "id": p.id}, "message": p.message, "details": p.details}}));
        }
    }
    let mut action = action;
    if errors.is_empty() {
        for item in &items {
            let id = item["sys"]["id"].as_str().unwrap_or_default();
            let _ = publish_in(cma, e, id, None);
        }
        action["sys"]["status"] = json!("succeeded");
    } else {
        action["sys"]["status"] = json!("failed");
        action["error"] = json!({"sys": {"type": "Error", "id": "BulkActionFailed"}, "message": "Some entities could not be published", "details": {"errors": errors}});
    }
    action["sys"]["updatedAt"] = json!(now());
    e.bulk_actions.insert(action_id.to_owned(), action);
}

async fn get_bulk_action(
    State(cma): State<Arc<Cma>>,
    Path((space, env, id)): Path<(String, String, String)>,
) -> ApiResult {
    ok(with_env(&cma, &space, &env, |e| {
        let action = e
            .bulk_actions
            .get_mut(&id)
            .ok_or_else(ApiError::not_found)?;
        if action["sys"]["status"] == "created" {
            action["sys"]["status"] = json!("inProgress");
        }
        Ok(action.clone())
    })?)
}
