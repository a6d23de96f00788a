//! The stop rule of every pagination style (see `pagination.rs`), against a
//! real server on 127.0.0.1 whose pages can come back empty while the API
//! still says there is more: such a page is skipped (so many in a row, then an
//! error naming the page), the same one page at a time and `concurrency` at a
//! time; an empty page after which nothing says there is more ends the read;
//! totals can come from headers, and a total setting that finds nothing on the
//! first page is an error; a pagination loop passes on the page that revealed
//! it, then fails.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use sluicegate_adapters_http::{HttpSource, HttpSourceConfig, MAX_EMPTY_PAGES};
use sluicegate_core::{BuildContext, MemoryBudget, ReadRequest, Source, parse_section};

const PAGES: u64 = 20;
const SIZE: u64 = 10;

struct Api {
    empty: HashSet<u64>,
    /// The cursor page whose next cursor repeats an earlier one.
    loop_at: Option<u64>,
}

impl Api {
    fn rows(&self, page: u64) -> Vec<Value> {
        if self.empty.contains(&page) || page == 0 || page > PAGES {
            return Vec::new();
        }
        ((page - 1) * SIZE + 1..=page * SIZE)
            .map(|id| json!({"id": id}))
            .collect()
    }

    /// A page with every kind of total, in the body and in headers.
    fn counted(&self, page: u64) -> Response {
        let rows = self.rows(page);
        let mut response =
            axum::Json(json!({"results": rows, "pages": PAGES, "total": PAGES * SIZE}))
                .into_response();
        let h = response.headers_mut();
        h.insert("x-total-count", (PAGES * SIZE).into());
        h.insert("x-total-pages", PAGES.into());
        let from = (page - 1) * SIZE;
        let range = format!("items {from}-{}/{}", from + SIZE - 1, PAGES * SIZE);
        h.insert("content-range", range.parse().unwrap());
        response
    }
}

type Q = Query<HashMap<String, String>>;

fn num(q: &HashMap<String, String>, k: &str, default: u64) -> u64 {
    q.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn pages(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    api.counted(num(&q, "page", 1))
}
async fn index(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    api.counted(num(&q, "p", 0) + 1)
}
async fn offset(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    api.counted(num(&q, "offset", 0) / SIZE + 1)
}
async fn bare(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    axum::Json(json!({"results": api.rows(num(&q, "page", 1))})).into_response()
}
async fn cursor(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    let page = num(&q, "after", 0) + 1;
    let next = if api.loop_at == Some(page) {
        Some((page - 2).to_string())
    } else {
        (page < PAGES).then(|| page.to_string())
    };
    axum::Json(json!({"data": api.rows(page), "next": next})).into_response()
}
async fn next_url(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    let page = num(&q, "page", 1);
    let next = (page < PAGES).then(|| format!("/next?page={}", page + 1));
    axum::Json(json!({"value": api.rows(page), "next": next})).into_response()
}
async fn link(State(api): State<Arc<Api>>, Query(q): Q) -> Response {
    let page = num(&q, "page", 1);
    let mut response = axum::Json(api.rows(page)).into_response();
    if page < PAGES {
        let link = format!("</link?page={}>; rel=\"next\"", page + 1);
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}
async fn token(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let page = headers
        .get("x-token")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1);
    let mut response = axum::Json(json!({"rows": api.rows(page)})).into_response();
    if page < PAGES {
        response.headers_mut().insert("x-token", (page + 1).into());
    }
    response
}

async fn serve(empty: impl IntoIterator<Item = u64>, loop_at: Option<u64>) -> String {
    let api = Arc::new(Api {
        empty: empty.into_iter().collect(),
        loop_at,
    });
    let app = Router::new()
        .route("/pages", get(pages))
        .route("/index", get(index))
        .route("/offset", get(offset))
        .route("/bare", get(bare))
        .route("/cursor", get(cursor))
        .route("/next", get(next_url))
        .route("/link", get(link))
        .route("/token", get(token))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn ctx() -> BuildContext {
    BuildContext::new("stop", false).with_template_scope(json!({"env": {}, "config": {}}))
}

/// Each style: a name, the route, where records are, the pagination section.
fn styles() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    let pages = |extra: Value| {
        let mut p = json!({"type": "page_number", "limitKey": "size", "pageSize": SIZE});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    vec![
        (
            "page_number totalPagesPath",
            "/pages",
            "results",
            pages(json!({"totalPagesPath": "pages"})),
        ),
        (
            "page_number totalPath",
            "/pages",
            "results",
            pages(json!({"totalPath": "total"})),
        ),
        (
            "page_number X-Total-Count",
            "/pages",
            "results",
            pages(json!({"totalHeader": "X-Total-Count"})),
        ),
        (
            "page_number Content-Range",
            "/pages",
            "results",
            pages(json!({"totalHeader": "Content-Range"})),
        ),
        (
            "page_number X-Total-Pages",
            "/pages",
            "results",
            pages(json!({"totalPagesHeader": "X-Total-Pages"})),
        ),
        (
            "offset page index",
            "/index",
            "results",
            json!({"skipKey": "p", "limitKey": "n", "pageSize": SIZE, "skipMode": "page", "totalPagesPath": "pages"}),
        ),
        (
            "cursor",
            "/cursor",
            "data",
            json!({"type": "cursor", "cursorPath": "next", "cursorParam": "after"}),
        ),
        (
            "next_url",
            "/next",
            "value",
            json!({"type": "next_url", "nextUrlPath": "next"}),
        ),
        ("link_header", "/link", "", json!({"type": "link_header"})),
        (
            "header_token",
            "/token",
            "rows",
            json!({"type": "header_token", "responseHeader": "x-token"}),
        ),
    ]
}

/// Reads a route to the end: the ids read, and the error if the read failed.
async fn read(
    url: &str,
    route: &str,
    path: &str,
    pagination: &Value,
    concurrency: usize,
) -> (Vec<u64>, Option<String>) {
    let section = json!({
        "endPoint": format!("{url}{route}"),
        "resultsJsonPath": path,
        "pagination": pagination,
        "concurrency": concurrency,
        "retry": {"maxAttempts": 1},
    });
    let config: HttpSourceConfig = parse_section(section, "source").unwrap();
    let source = HttpSource::new(&config, &ctx()).unwrap();
    let mut stream = source.read(ReadRequest::new("stop", MemoryBudget::new(8 << 20)));
    let mut ids = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(batch) => ids.extend(batch.records().iter().map(|r| r["id"].as_u64().unwrap())),
            Err(e) => return (ids, Some(e.to_string())),
        }
    }
    (ids, None)
}

fn ids_without(empty: &[u64]) -> Vec<u64> {
    (1..=PAGES)
        .filter(|p| !empty.contains(p))
        .flat_map(|p| (p - 1) * SIZE + 1..=p * SIZE)
        .collect()
}

#[tokio::test]
async fn an_empty_page_while_the_api_says_more_is_skipped_in_every_style_and_at_any_concurrency() {
    let url = serve([3, 7, 8], None).await;
    let want = ids_without(&[3, 7, 8]);
    for (name, route, path, pagination) in styles() {
        for concurrency in [1, 4] {
            let (ids, err) = read(&url, route, path, &pagination, concurrency).await;
            assert_eq!(err, None, "{name} at concurrency {concurrency}");
            assert_eq!(ids, want, "{name} at concurrency {concurrency}");
        }
    }
}

#[tokio::test]
async fn too_many_empty_pages_in_a_row_fail_naming_the_page() {
    let run = MAX_EMPTY_PAGES + 1;
    let url = serve(3..3 + run, None).await;
    let last = 2 + run;
    for (name, route, path, pagination) in styles() {
        for concurrency in [1, 4] {
            let (ids, err) = read(&url, route, path, &pagination, concurrency).await;
            let err = err.unwrap_or_else(|| panic!("{name} at {concurrency}: no error"));
            assert!(
                err.contains(&format!("page {last} ("))
                    && err.contains(&format!("is the {run}th empty page in a row")),
                "{name} at concurrency {concurrency}: {err}"
            );
            assert_eq!(
                ids,
                ids_without(&(3..=PAGES).collect::<Vec<_>>()),
                "{name} at {concurrency}: pages 1-2 came"
            );
        }
    }
}

#[tokio::test]
async fn an_empty_page_after_which_nothing_says_more_ends_the_read() {
    let url = serve([3], None).await;
    let pagination = json!({"type": "page_number"});
    let (ids, err) = read(&url, "/bare", "results", &pagination, 1).await;
    assert_eq!((ids, err), ((1..=20).collect(), None));
}

#[tokio::test]
async fn record_offsets_fail_at_an_empty_page_before_the_total_at_any_concurrency() {
    let url = serve([3], None).await;
    let pagination =
        json!({"skipKey": "offset", "limitKey": "limit", "pageSize": SIZE, "totalPath": "total"});
    for concurrency in [1, 4] {
        let (ids, err) = read(&url, "/offset", "results", &pagination, concurrency).await;
        let err = err.unwrap();
        assert!(
            err.contains("page 3 (") && err.contains("has no records"),
            "{concurrency}: {err}"
        );
        assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "{concurrency}");
    }
}

#[tokio::test]
async fn a_total_setting_that_finds_nothing_on_the_first_page_is_an_error_naming_it() {
    let url = serve([], None).await;
    for (setting, value, says) in [
        (
            "totalPath",
            "meta.count",
            "pagination.totalPath 'meta.count' found no number in the first page's body",
        ),
        (
            "totalPagesPath",
            "pageCount",
            "pagination.totalPagesPath 'pageCount' found no number",
        ),
        (
            "totalHeader",
            "X-Count",
            "pagination.totalHeader 'X-Count' found no number in the first page's response headers",
        ),
        (
            "totalPagesHeader",
            "X-Pages",
            "pagination.totalPagesHeader 'X-Pages' found no number",
        ),
    ] {
        let pagination =
            json!({"type": "page_number", "limitKey": "size", "pageSize": SIZE, setting: value});
        for concurrency in [1, 4] {
            let (ids, err) = read(&url, "/pages", "results", &pagination, concurrency).await;
            let err = err.unwrap_or_else(|| panic!("{setting}: no error"));
            assert!(err.contains(says), "{setting}: {err}");
            assert!(ids.is_empty(), "{setting}");
        }
    }
}

#[tokio::test]
async fn a_pagination_loop_passes_on_the_page_that_revealed_it_then_fails() {
    let url = serve([], Some(5)).await;
    let pagination = json!({"type": "cursor", "cursorPath": "next", "cursorParam": "after"});
    let (ids, err) = read(&url, "/cursor", "data", &pagination, 1).await;
    let err = err.unwrap();
    assert!(
        err.contains("pagination loop: page 5 returned next token"),
        "{err}"
    );
    assert_eq!(
        ids,
        (1..=50).collect::<Vec<_>>(),
        "pages 1-5, the fifth included"
    );
}
