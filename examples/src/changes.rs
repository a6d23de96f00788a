//! A changing API for incremental syncs: items that tests (or a benchmark)
//! create, change and remove while it serves them.
//!
//! `GET /items?since=T&offset=O&limit=L` answers
//! `{"data": [...], "meta": {"total": N, "offset": O, "limit": L}}`: the items
//! whose `updated_at` is at or after `since` (all of them without `since`),
//! ordered by `updated_at`, then `id`. Items without `updated_at` are always
//! served, first (the API cannot place them in time). Timestamps are RFC 3339
//! UTC with whole seconds (`2024-01-01T00:00:00Z`), so `since` compares as
//! text. The server counts requests and the rows it served, so a test can prove
//! what a run fetched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::time::timestamp;

/// One item of the changing API.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its key.
    pub id: u64,
    /// Some text that changes with the item.
    pub name: String,
    /// When it last changed, in Unix seconds; `None`: the API does not say.
    pub updated: Option<u64>,
}

impl Item {
    /// The item as the API serves it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"id": self.id, "name": self.name});
        if let Some(updated) = self.updated {
            v["updated_at"] = json!(timestamp(updated));
        }
        v
    }
}

/// The changing API, served on a local port until dropped.
pub struct ChangesServer {
    addr: SocketAddr,
    state: Arc<ChangesState>,
    stop: Option<oneshot::Sender<()>>,
}

struct ChangesState {
    items: Mutex<BTreeMap<u64, Item>>,
    requests: AtomicU64,
    rows: AtomicU64,
    page_delay: Duration,
}

#[derive(Deserialize)]
struct ItemsQuery {
    since: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
}

impl ChangesServer {
    /// Serves `items` on `addr` (port 0: a free port), waiting `page_delay`
    /// before each answer.
    pub async fn start(
        items: impl IntoIterator<Item = Item>,
        addr: &str,
        page_delay: Duration,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ChangesState {
            items: Mutex::new(items.into_iter().map(|i| (i.id, i)).collect()),
            requests: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            page_delay,
        });
        let app = Router::new()
            .route("/items", get(items_page))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "changes api stopped");
            }
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// The items endpoint's URL, e.g. `http://127.0.0.1:41234/items`.
    pub fn url(&self) -> String {
        format!("http://{}/items", self.addr)
    }

    fn items(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Item>> {
        self.state
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates or replaces an item.
    pub fn put(&self, item: Item) {
        self.items().insert(item.id, item);
    }

    /// Removes an item; whether it was there.
    pub fn remove(&self, id: u64) -> bool {
        self.items().remove(&id).is_some()
    }

    /// Every item as served, ordered by id.
    pub fn records(&self) -> Vec<Value> {
        self.items().values().map(Item::to_json).collect()
    }

    /// The highest `updated_at` served, as the API writes it.
    pub fn latest(&self) -> Option<String> {
        self.items()
            .values()
            .filter_map(|i| i.updated)
            .max()
            .map(timestamp)
    }

    /// Requests answered since the last [`ChangesServer::reset_counts`].
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Rows served since the last [`ChangesServer::reset_counts`].
    pub fn rows_served(&self) -> u64 {
        self.state.rows.load(Ordering::Relaxed)
    }

    /// Starts counting requests and rows again from zero.
    pub fn reset_counts(&self) {
        self.state.requests.store(0, Ordering::Relaxed);
        self.state.rows.store(0, Ordering::Relaxed);
    }
}

impl Drop for ChangesServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn items_page(
    State(state): State<Arc<ChangesState>>,
    Query(query): Query<ItemsQuery>,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if !state.page_delay.is_zero() {
        tokio::time::sleep(state.page_delay).await;
    }
    let mut selected: Vec<(Option<String>, u64, Value)> = {
        let items = state.items.lock().unwrap_or_else(PoisonError::into_inner);
        items
            .values()
            .map(|i| (i.updated.map(timestamp), i.id, i.to_json()))
            .filter(|(updated, _, _)| match (&query.since, updated) {
                (Some(since), Some(updated)) => updated >= since,
                _ => true,
            })
            .collect()
    };
    selected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let total = selected.len() as u64;
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let data: Vec<Value> = selected
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|(_, _, v)| v)
        .collect();
    state.rows.fetch_add(data.len() as u64, Ordering::Relaxed);
    let body = json!({"data": data, "meta": {"total": total, "offset": offset, "limit": limit}});
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn since_filters_and_orders_by_update_then_id() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let items = (1..=5).map(|id| Item {
            id,
            name: format!("n{id}"),
            updated: Some(1_000 - id * 10),
        });
        let server = ChangesServer::start(items, "127.0.0.1:0", Duration::ZERO)
            .await
            .unwrap();
        server.put(Item {
            id: 9,
            name: "no time".into(),
            updated: None,
        });
        let body: Value = reqwest::get(format!(
            "{}?since={}&limit=10",
            server.url(),
            timestamp(970)
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let ids: Vec<u64> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [9, 3, 2, 1]);
        assert_eq!(body["meta"]["total"], json!(4));
        assert_eq!((server.requests(), server.rows_served()), (1, 4));
        assert_eq!(server.latest(), Some(timestamp(990)));
    }
}
