//! Pagination styles: how the next request is made and when to stop.
//!
//! | `type` | next request | the API says there is more when |
//! |---|---|---|
//! | `offset` (default) | `skipKey` = record offset (`skipMode: offset`) or page index (`skipMode: page`, `cute`'s current behaviour), `limitKey` = `pageSize` | the total (`totalPath`/`totalHeader`) is not reached; the page count (`totalPagesPath`/`totalPagesHeader`) is not reached; `hasMorePath` is true; without any of these: the page was full (`limitMax`, else `pageSize`) |
//! | `page_number` | `pageKey` = page number from `basePage` (default 1), optional `limitKey` | as `offset` (without totals or a page size: the page had records) |
//! | `cursor` | the cursor at `cursorPath`, sent as `cursorParam` or into the POST body at `cursorBodyPath` | a cursor came (and `hasMorePath` is not false) |
//! | `next_url` | the URL at `nextUrlPath` (relative URLs resolved) | a URL came |
//! | `link_header` | the `rel="next"` URL of the `Link` header (RFC 8288) | a next link came |
//! | `header_token` | the value of the response header `responseHeader`, sent back as request header `requestHeader` (`cute`'s `continuationTokenHeader`) | a token came |
//! | `single` | — | never |
//!
//! One stop rule for every style, the same whether pages are fetched one by
//! one or `concurrency` at a time: the read ends at the first page after which
//! the API does not say there is more. An empty page after which it does is
//! skipped, up to [`MAX_EMPTY_PAGES`] in a row, then the read fails naming the
//! page. The one exception is `offset` with record offsets and a total: an
//! empty page before the total fails at once, because the next offset would
//! have to assume records that never came. `maxPages` stops any style; a
//! repeated token or URL (a pagination loop) fails naming the page, after the
//! page's records were passed on. A `totalPath`, `totalPagesPath`,
//! `totalHeader` or `totalPagesHeader` that finds nothing on the first page is
//! an error naming it.

use crate::jsonpath::JsonSelector;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use sluicegate_core::{Error, Position, Result, field_error};

/// Empty pages in a row that are skipped while the API says there is more;
/// one more fails the read.
pub const MAX_EMPTY_PAGES: u64 = 10;

/// `skipKey` semantics of `type: offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SkipMode {
    /// A record offset, advanced by the records received.
    #[default]
    Offset,
    /// A page index, advanced by one (`cute`'s current versions).
    Page,
}

/// The `pagination` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// Offset (or page index) and limit query parameters.
    Offset(OffsetPaging),
    /// A page number query parameter.
    PageNumber(PageNumberPaging),
    /// A cursor from the body.
    Cursor(CursorPaging),
    /// A next URL from the body.
    NextUrl(NextUrlPaging),
    /// A next URL from the `Link` header.
    LinkHeader(LinkHeaderPaging),
    /// A continuation token from a response header.
    HeaderToken(HeaderTokenPaging),
    /// One request.
    Single(SinglePaging),
}

impl Pagination {
    /// This pagination asking for `size` records per page (a run's
    /// `--page-size`), where the API takes a page size: kept to `limitMax`, which
    /// then also becomes the full-page mark.
    pub fn with_page_size(mut self, size: u64) -> Self {
        let size = size.max(1);
        match &mut self {
            Pagination::Offset(p) => {
                let size = p.limit_max.map_or(size, |max| size.min(max));
                p.page_size = size;
                if p.limit_max.is_some() {
                    p.limit_max = Some(size);
                }
            }
            Pagination::PageNumber(p) if p.limit_key.is_some() => p.page_size = Some(size),
            Pagination::Cursor(p) if p.limit_key.is_some() => p.page_size = Some(size),
            _ => {}
        }
        self
    }
}

/// `type: offset`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OffsetPaging {
    /// The offset (or page index) parameter.
    #[serde(default = "default_skip_key")]
    pub skip_key: String,
    /// What `skipKey` counts.
    #[serde(default)]
    pub skip_mode: SkipMode,
    /// The first page index, for `skipMode: page`.
    #[serde(default)]
    pub base_page: u64,
    /// The page size parameter.
    #[serde(default = "default_limit_key")]
    pub limit_key: String,
    /// Records asked for per page.
    #[serde(default = "default_page_size")]
    pub page_size: u64,
    /// `cute`'s `limitMax`: a page with fewer records ends the read.
    #[serde(default)]
    pub limit_max: Option<u64>,
    /// JSONPath to the total number of records.
    #[serde(default)]
    pub total_path: Option<String>,
    /// JSONPath to the total number of pages (`cute`'s `resultsTotalPagesPath`).
    #[serde(default)]
    pub total_pages_path: Option<String>,
    /// Response header with the total number of records (`X-Total-Count`, or
    /// `Content-Range: items 0-99/1234`, whose part after `/` is read).
    #[serde(default)]
    pub total_header: Option<String>,
    /// Response header with the total number of pages (`X-Total-Pages`).
    #[serde(default)]
    pub total_pages_header: Option<String>,
    /// JSONPath to a boolean "more pages" flag.
    #[serde(default)]
    pub has_more_path: Option<String>,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

impl Default for OffsetPaging {
    /// `offset`/`limit` parameters, 100 records per page, no totals.
    fn default() -> Self {
        Self {
            skip_key: default_skip_key(),
            skip_mode: SkipMode::default(),
            base_page: 0,
            limit_key: default_limit_key(),
            page_size: default_page_size(),
            limit_max: None,
            total_path: None,
            total_pages_path: None,
            total_header: None,
            total_pages_header: None,
            has_more_path: None,
            max_pages: None,
        }
    }
}

/// `type: page_number`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PageNumberPaging {
    /// The page number parameter.
    #[serde(default = "default_page_key")]
    pub page_key: String,
    /// The first page's number.
    #[serde(default = "default_base_page")]
    pub base_page: u64,
    /// The page size parameter, if the API takes one.
    #[serde(default)]
    pub limit_key: Option<String>,
    /// Records per page (sent as `limitKey`, and used by the short-page rule).
    #[serde(default)]
    pub page_size: Option<u64>,
    /// JSONPath to the total number of records.
    #[serde(default)]
    pub total_path: Option<String>,
    /// JSONPath to the total number of pages.
    #[serde(default)]
    pub total_pages_path: Option<String>,
    /// Response header with the total number of records (`X-Total-Count`, or
    /// `Content-Range: items 0-99/1234`, whose part after `/` is read).
    #[serde(default)]
    pub total_header: Option<String>,
    /// Response header with the total number of pages (`X-Total-Pages`).
    #[serde(default)]
    pub total_pages_header: Option<String>,
    /// JSONPath to a boolean "more pages" flag.
    #[serde(default)]
    pub has_more_path: Option<String>,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

/// `type: cursor`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CursorPaging {
    /// JSONPath to the next cursor in the body.
    #[serde(default = "default_cursor_path")]
    pub cursor_path: String,
    /// The query parameter carrying the cursor.
    #[serde(default)]
    pub cursor_param: Option<String>,
    /// Dotted path in the JSON request body carrying the cursor (POST).
    #[serde(default)]
    pub cursor_body_path: Option<String>,
    /// The page size parameter, if the API takes one.
    #[serde(default)]
    pub limit_key: Option<String>,
    /// Records per page.
    #[serde(default)]
    pub page_size: Option<u64>,
    /// JSONPath to a boolean "more pages" flag.
    #[serde(default)]
    pub has_more_path: Option<String>,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

/// `type: next_url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NextUrlPaging {
    /// JSONPath to the next page's URL.
    pub next_url_path: String,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

/// `type: link_header`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LinkHeaderPaging {
    /// The link relation to follow.
    #[serde(default = "default_rel")]
    pub rel: String,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

/// `type: header_token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderTokenPaging {
    /// The response header holding the token.
    pub response_header: String,
    /// The request header sending it back (default: the same name).
    #[serde(default)]
    pub request_header: Option<String>,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u64>,
}

/// `type: single`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinglePaging {}

fn default_skip_key() -> String {
    "offset".to_owned()
}
fn default_limit_key() -> String {
    "limit".to_owned()
}
fn default_page_size() -> u64 {
    100
}
fn default_page_key() -> String {
    "page".to_owned()
}
fn default_base_page() -> u64 {
    1
}
fn default_cursor_path() -> String {
    "cursors.next".to_owned()
}
fn default_rel() -> String {
    "next".to_owned()
}

/// Deserializes a `pagination` section, defaulting `type` to `offset` (the
/// `cute` form has no `type`).
pub(crate) fn deserialize_pagination<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Pagination>, D::Error> {
    let mut raw = Option::<Value>::deserialize(d)?;
    if let Some(Value::Object(map)) = &mut raw
        && !map.contains_key("type")
    {
        map.insert("type".into(), json!("offset"));
    }
    raw.map(|v| serde_json::from_value(v).map_err(serde::de::Error::custom))
        .transpose()
}

/// How one page is requested.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PageRequest {
    /// Replaces the endpoint (next URL styles).
    pub(crate) url: Option<String>,
    /// Query parameters to add.
    pub(crate) query: Vec<(String, String)>,
    /// Request headers to add.
    pub(crate) headers: Vec<(String, String)>,
    /// Values to set in the JSON body: (dotted path, value).
    pub(crate) body: Vec<(String, String)>,
}

/// What the paginator learns from a page.
pub(crate) struct PageFacts<'a> {
    pub(crate) records: u64,
    pub(crate) meta: &'a Value,
    pub(crate) headers: &'a HeaderMap,
    /// The URL the page was fetched from (to resolve relative next URLs).
    pub(crate) url: &'a reqwest::Url,
}

/// Compiled pagination.
#[derive(Debug, Clone)]
pub(crate) struct Paginator {
    style: Pagination,
    total: Option<JsonSelector>,
    total_pages: Option<JsonSelector>,
    total_header: Option<String>,
    total_pages_header: Option<String>,
    has_more: Option<JsonSelector>,
    cursor: Option<JsonSelector>,
    next_url: Option<JsonSelector>,
}

fn selector(path: &Option<String>, field: &str) -> Result<Option<JsonSelector>> {
    path.as_deref()
        .map(|p| JsonSelector::parse(p).map_err(|e| field_error(field, e.message())))
        .transpose()
}

impl Paginator {
    /// Compiles the paths; errors name the field.
    pub(crate) fn new(style: Option<Pagination>) -> Result<Self> {
        let style = style.unwrap_or(Pagination::Single(SinglePaging {}));
        let (total, total_pages, has_more, cursor, next_url) = match &style {
            Pagination::Offset(p) => (
                selector(&p.total_path, "pagination.totalPath")?,
                selector(&p.total_pages_path, "pagination.totalPagesPath")?,
                selector(&p.has_more_path, "pagination.hasMorePath")?,
                None,
                None,
            ),
            Pagination::PageNumber(p) => (
                selector(&p.total_path, "pagination.totalPath")?,
                selector(&p.total_pages_path, "pagination.totalPagesPath")?,
                selector(&p.has_more_path, "pagination.hasMorePath")?,
                None,
                None,
            ),
            Pagination::Cursor(p) => (
                None,
                None,
                selector(&p.has_more_path, "pagination.hasMorePath")?,
                selector(&Some(p.cursor_path.clone()), "pagination.cursorPath")?,
                None,
            ),
            Pagination::NextUrl(p) => (
                None,
                None,
                None,
                None,
                selector(&Some(p.next_url_path.clone()), "pagination.nextUrlPath")?,
            ),
            _ => (None, None, None, None, None),
        };
        match &style {
            Pagination::Offset(p) if p.page_size == 0 => {
                return Err(field_error("pagination.pageSize", "must be at least 1"));
            }
            Pagination::Offset(p) if p.skip_key.is_empty() || p.limit_key.is_empty() => {
                return Err(field_error(
                    "pagination",
                    "skipKey and limitKey must not be empty",
                ));
            }
            Pagination::Cursor(p) if p.cursor_param.is_some() == p.cursor_body_path.is_some() => {
                return Err(field_error(
                    "pagination",
                    "a cursor needs exactly one of cursorParam and cursorBodyPath",
                ));
            }
            _ => {}
        }
        if self::max_pages(&style) == Some(0) {
            return Err(field_error("pagination.maxPages", "must be at least 1"));
        }
        let (total_header, total_pages_header) = match &style {
            Pagination::Offset(p) => (p.total_header.clone(), p.total_pages_header.clone()),
            Pagination::PageNumber(p) => (p.total_header.clone(), p.total_pages_header.clone()),
            _ => (None, None),
        };
        for (name, field) in [
            (&total_header, "pagination.totalHeader"),
            (&total_pages_header, "pagination.totalPagesHeader"),
        ] {
            if let Some(name) = name
                && reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            {
                return Err(field_error(field, format!("'{name}' is not a header name")));
            }
        }
        Ok(Self {
            style,
            total,
            total_pages,
            total_header,
            total_pages_header,
            has_more,
            cursor,
            next_url,
        })
    }

    /// Records asked for per page, if the style says.
    pub(crate) fn page_size(&self) -> Option<u64> {
        match &self.style {
            Pagination::Offset(p) => Some(p.page_size),
            Pagination::PageNumber(p) => p.page_size,
            Pagination::Cursor(p) => p.page_size,
            _ => None,
        }
    }

    /// The request for the page at `token` (`None`: the first page).
    pub(crate) fn request(&self, token: Option<&Position>) -> Result<PageRequest> {
        let t = token.map(Position::as_value);
        let mut r = PageRequest::default();
        match &self.style {
            Pagination::Offset(p) => {
                let skip = match p.skip_mode {
                    SkipMode::Offset => t.map_or(Some(0), |t| t["offset"].as_u64()),
                    SkipMode::Page => t.map_or(Some(p.base_page), |t| t["page"].as_u64()),
                }
                .ok_or_else(|| bad_token(token))?;
                r.query.push((p.skip_key.clone(), skip.to_string()));
                r.query.push((p.limit_key.clone(), p.page_size.to_string()));
            }
            Pagination::PageNumber(p) => {
                let page = t
                    .map_or(Some(p.base_page), |t| t["page"].as_u64())
                    .ok_or_else(|| bad_token(token))?;
                r.query.push((p.page_key.clone(), page.to_string()));
                if let (Some(k), Some(n)) = (&p.limit_key, p.page_size) {
                    r.query.push((k.clone(), n.to_string()));
                }
            }
            Pagination::Cursor(p) => {
                if let (Some(k), Some(n)) = (&p.limit_key, p.page_size) {
                    r.query.push((k.clone(), n.to_string()));
                }
                if let Some(t) = t {
                    let cursor = t["cursor"]
                        .as_str()
                        .ok_or_else(|| bad_token(token))?
                        .to_owned();
                    match (&p.cursor_param, &p.cursor_body_path) {
                        (Some(param), _) => r.query.push((param.clone(), cursor)),
                        (None, Some(path)) => r.body.push((path.clone(), cursor)),
                        (None, None) => {}
                    }
                }
            }
            Pagination::NextUrl(_) | Pagination::LinkHeader(_) => {
                if let Some(t) = t {
                    r.url = Some(
                        t["url"]
                            .as_str()
                            .ok_or_else(|| bad_token(token))?
                            .to_owned(),
                    );
                }
            }
            Pagination::HeaderToken(p) => {
                if let Some(t) = t {
                    let value = t["token"]
                        .as_str()
                        .ok_or_else(|| bad_token(token))?
                        .to_owned();
                    let name = p
                        .request_header
                        .clone()
                        .unwrap_or_else(|| p.response_header.clone());
                    r.headers.push((name, value));
                }
            }
            Pagination::Single(_) => {}
        }
        Ok(r)
    }

    /// The token of the page after `token`, or `None` when this page was the last.
    pub(crate) fn next(
        &self,
        token: Option<&Position>,
        page: u64,
        facts: &PageFacts<'_>,
    ) -> Option<Position> {
        if max_pages(&self.style).is_some_and(|max| page >= max) {
            return None;
        }
        let has_more = self.has_more_flag(facts);
        if has_more == Some(false)
            || (facts.records == 0 && self.has_more.is_some() && has_more.is_none())
        {
            return None;
        }
        let t = token.map(Position::as_value);
        match &self.style {
            Pagination::Offset(p) => {
                if p.limit_max.is_some_and(|m| facts.records < m)
                    && (facts.records > 0 || !self.counts_known(facts))
                {
                    return None;
                }
                let (done_before, next) = match p.skip_mode {
                    SkipMode::Offset => {
                        let offset = t.and_then(|t| t["offset"].as_u64()).unwrap_or(0);
                        // An empty page skipped (the API says there is more):
                        // the next page starts a page further.
                        let step = if facts.records == 0 {
                            p.page_size
                        } else {
                            facts.records
                        };
                        (offset, json!({ "offset": offset + step }))
                    }
                    SkipMode::Page => {
                        let index = t.and_then(|t| t["page"].as_u64()).unwrap_or(p.base_page);
                        (
                            (index - p.base_page) * p.page_size,
                            json!({ "page": index + 1 }),
                        )
                    }
                };
                let pages_done = match p.skip_mode {
                    SkipMode::Offset => done_before / p.page_size.max(1) + 1,
                    SkipMode::Page => {
                        t.and_then(|t| t["page"].as_u64()).unwrap_or(p.base_page) - p.base_page + 1
                    }
                };
                self.continue_by_totals(
                    done_before + facts.records,
                    pages_done,
                    facts,
                    Some(p.page_size),
                )
                .then(|| Position::new(next))
            }
            Pagination::PageNumber(p) => {
                if facts.records == 0 && p.page_size.is_none() && !self.counts_known(facts) {
                    // Nothing says there is more: an empty page ends the read.
                    return None;
                }
                let number = t.and_then(|t| t["page"].as_u64()).unwrap_or(p.base_page);
                let pages_done = number - p.base_page + 1;
                let records_done = p.page_size.map_or(0, |n| (pages_done - 1) * n) + facts.records;
                self.continue_by_totals(records_done, pages_done, facts, p.page_size)
                    .then(|| Position::new(json!({ "page": number + 1 })))
            }
            Pagination::Cursor(_) => {
                let cursor = self.cursor.as_ref()?.select_string(facts.meta)?;
                (!cursor.is_empty()).then(|| Position::new(json!({ "cursor": cursor })))
            }
            Pagination::NextUrl(_) => {
                let next = self.next_url.as_ref()?.select_string(facts.meta)?;
                let url = facts.url.join(&next).ok()?;
                Some(Position::new(json!({ "url": url.as_str() })))
            }
            Pagination::LinkHeader(p) => {
                let next = link_next(facts.headers, &p.rel)?;
                let url = facts.url.join(&next).ok()?;
                Some(Position::new(json!({ "url": url.as_str() })))
            }
            Pagination::HeaderToken(p) => {
                let token = facts.headers.get(&p.response_header)?.to_str().ok()?.trim();
                (!token.is_empty()).then(|| Position::new(json!({ "token": token })))
            }
            Pagination::Single(_) => None,
        }
    }

    /// For an empty page of record offsets: the records read so far and the
    /// total the page announced, when that total says records are still
    /// missing. The next offset would have to assume records that never came,
    /// so this is an error rather than a skipped page (other styles skip).
    pub(crate) fn empty_before_total(
        &self,
        token: Option<&Position>,
        facts: &PageFacts<'_>,
    ) -> Option<(u64, u64)> {
        if facts.records > 0 || !self.record_offsets() {
            return None;
        }
        let total = self.total_of(facts)?;
        let done = self.records_before(token)?;
        (done < total).then_some((done, total))
    }

    /// Whether positions are record offsets (`offset` with `skipMode: offset`).
    pub(crate) fn record_offsets(&self) -> bool {
        matches!(&self.style, Pagination::Offset(p) if p.skip_mode == SkipMode::Offset)
    }

    /// The API's total number of records, when the page says (`totalPath` or
    /// `totalHeader`).
    pub(crate) fn total_of(&self, facts: &PageFacts<'_>) -> Option<u64> {
        match (&self.total, &self.total_header) {
            (Some(sel), _) => sel.select_u64(facts.meta),
            (None, Some(name)) => header_count(facts.headers, name),
            (None, None) => None,
        }
    }

    /// The API's total number of pages, when the page says.
    fn total_pages_of(&self, facts: &PageFacts<'_>) -> Option<u64> {
        match (&self.total_pages, &self.total_pages_header) {
            (Some(sel), _) => sel.select_u64(facts.meta),
            (None, Some(name)) => header_count(facts.headers, name),
            (None, None) => None,
        }
    }

    /// The page's "has more" flag (`hasMorePath`), if it has one.
    fn has_more_flag(&self, facts: &PageFacts<'_>) -> Option<bool> {
        let sel = self.has_more.as_ref()?;
        sel.select(facts.meta).into_iter().find_map(|v| match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => Some(n.as_u64() != Some(0)),
            _ => None,
        })
    }

    /// Whether the page carries a total, a page count or a true "has more" flag.
    fn counts_known(&self, facts: &PageFacts<'_>) -> bool {
        self.total_of(facts).is_some()
            || self.total_pages_of(facts).is_some()
            || self.has_more_flag(facts) == Some(true)
    }

    /// Totals and page counts configured but missing from the first page: an
    /// error naming the setting, instead of reading on without them.
    pub(crate) fn check_first_page(&self, facts: &PageFacts<'_>) -> Result<()> {
        let missing = |what: &str, path: &str, found: Option<u64>| -> Result<()> {
            if found.is_some() {
                return Ok(());
            }
            Err(Error::decode(format!(
                "pagination.{what} '{path}' found no number in the first page's {}; fix the setting \
                 or remove it (the read would go on without knowing when it is complete)",
                if what.ends_with("Header") {
                    "response headers"
                } else {
                    "body"
                }
            )))
        };
        if let Some(sel) = &self.total {
            missing("totalPath", sel.as_str(), sel.select_u64(facts.meta))?;
        }
        if let Some(sel) = &self.total_pages {
            missing("totalPagesPath", sel.as_str(), sel.select_u64(facts.meta))?;
        }
        if let Some(name) = &self.total_header {
            missing("totalHeader", name, header_count(facts.headers, name))?;
        }
        if let Some(name) = &self.total_pages_header {
            missing("totalPagesHeader", name, header_count(facts.headers, name))?;
        }
        Ok(())
    }

    /// Records before the page at `token`, where the style can tell (offset
    /// paging, or any style at the first page).
    pub(crate) fn records_before(&self, token: Option<&Position>) -> Option<u64> {
        let Pagination::Offset(p) = &self.style else {
            return token.is_none().then_some(0);
        };
        let t = token.map(Position::as_value);
        Some(match p.skip_mode {
            SkipMode::Offset => t.and_then(|t| t["offset"].as_u64()).unwrap_or(0),
            SkipMode::Page => {
                (t.and_then(|t| t["page"].as_u64()).unwrap_or(p.base_page) - p.base_page)
                    * p.page_size
            }
        })
    }

    /// Totals decide when known; otherwise a short page ends the read.
    fn continue_by_totals(
        &self,
        records_done: u64,
        pages_done: u64,
        facts: &PageFacts<'_>,
        page_size: Option<u64>,
    ) -> bool {
        match (self.total_of(facts), self.total_pages_of(facts)) {
            (Some(total), _) => records_done < total,
            (None, Some(pages)) => pages_done < pages,
            (None, None) if self.has_more.is_some() => true,
            (None, None) => facts.records > 0 && page_size.is_none_or(|n| facts.records >= n),
        }
    }

    /// Whether every page's request can be computed from the first page's
    /// total, so the pages can be split across shards: offsets or page
    /// numbers with a total (records or pages) to read it from.
    pub(crate) fn can_split(&self) -> bool {
        let totals = self.total.is_some()
            || self.total_pages.is_some()
            || self.total_header.is_some()
            || self.total_pages_header.is_some();
        match &self.style {
            Pagination::Offset(p) => p.limit_max.is_none() && totals,
            Pagination::PageNumber(_) => totals,
            _ => false,
        }
    }

    /// When every page's request can be computed from the first page (offset or
    /// page numbers with a known total), the tokens of all the following pages.
    pub(crate) fn remaining(&self, first: &PageFacts<'_>) -> Option<Vec<Position>> {
        let total = self.total_of(first);
        let total_pages = self.total_pages_of(first);
        let max = max_pages(&self.style).unwrap_or(u64::MAX);
        match &self.style {
            Pagination::Offset(p) if p.limit_max.is_none() => {
                let size = p.page_size;
                // A server that gives fewer than asked makes offsets unpredictable.
                if first.records != size {
                    return None;
                }
                let pages = match (total, total_pages) {
                    (Some(t), _) => t.div_ceil(size),
                    (None, Some(pages)) => pages,
                    _ => return None,
                }
                .min(max);
                Some(
                    (1..pages)
                        .map(|i| match p.skip_mode {
                            SkipMode::Offset => Position::new(json!({ "offset": i * size })),
                            SkipMode::Page => Position::new(json!({ "page": p.base_page + i })),
                        })
                        .collect(),
                )
            }
            Pagination::PageNumber(p) => {
                let pages = match (total_pages, total, p.page_size) {
                    (Some(pages), _, _) => pages,
                    (None, Some(t), Some(size)) if first.records == size => t.div_ceil(size),
                    _ => return None,
                }
                .min(max);
                Some(
                    (1..pages)
                        .map(|i| Position::new(json!({ "page": p.base_page + i })))
                        .collect(),
                )
            }
            _ => None,
        }
    }
}

fn max_pages(style: &Pagination) -> Option<u64> {
    match style {
        Pagination::Offset(p) => p.max_pages,
        Pagination::PageNumber(p) => p.max_pages,
        Pagination::Cursor(p) => p.max_pages,
        Pagination::NextUrl(p) => p.max_pages,
        Pagination::LinkHeader(p) => p.max_pages,
        Pagination::HeaderToken(p) => p.max_pages,
        Pagination::Single(_) => Some(1),
    }
}

fn bad_token(token: Option<&Position>) -> Error {
    Error::new(
        sluicegate_core::ErrorKind::Checkpoint,
        format!(
            "position {} does not fit this source's pagination; start over with --full-refresh",
            token.map_or_else(|| "-".to_owned(), ToString::to_string)
        ),
    )
}

/// A count in a response header: a plain number (`X-Total-Count: 1234`), or
/// the part after `/` of a range (`Content-Range: items 0-99/1234`); `None`
/// when absent or unknown (`0-99/*`).
fn header_count(headers: &HeaderMap, name: &str) -> Option<u64> {
    let text = headers.get(name)?.to_str().ok()?.trim();
    let count = text.rsplit_once('/').map_or(text, |(_, total)| total);
    count.trim().parse().ok()
}

/// The target of the link with relation `rel` in `Link` headers (RFC 8288).
fn link_next(headers: &HeaderMap, rel: &str) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let text = value.to_str().ok()?;
        for link in text.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let target = target.strip_prefix('<')?.strip_suffix('>')?;
            let matches = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=")
                    .map(|v| {
                        v.trim_matches('"')
                            .split_whitespace()
                            .any(|r| r.eq_ignore_ascii_case(rel))
                    })
                    .unwrap_or(false)
            });
            if matches {
                return Some(target.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn paginator(v: Value) -> Paginator {
        #[derive(Deserialize)]
        struct W {
            #[serde(deserialize_with = "deserialize_pagination")]
            p: Option<Pagination>,
        }
        let w: W = serde_json::from_value(json!({ "p": v })).unwrap();
        Paginator::new(w.p).unwrap()
    }

    fn facts<'a>(
        records: u64,
        meta: &'a Value,
        headers: &'a HeaderMap,
        url: &'a reqwest::Url,
    ) -> PageFacts<'a> {
        PageFacts {
            records,
            meta,
            headers,
            url,
        }
    }

    #[test]
    fn cute_style_offset_defaults_and_page_mode() {
        let url = reqwest::Url::parse("http://x/a").unwrap();
        let h = HeaderMap::new();
        let p = paginator(
            json!({"skipKey": "page", "limitKey": "per_page", "pageSize": 10, "skipMode": "page"}),
        );
        let first = p.request(None).unwrap();
        assert_eq!(
            first.query,
            [
                ("page".into(), "0".into()),
                ("per_page".into(), "10".into())
            ]
        );
        let next = p.next(None, 1, &facts(10, &Value::Null, &h, &url)).unwrap();
        assert_eq!(next, Position::new(json!({"page": 1})));
        assert!(
            p.next(Some(&next), 2, &facts(4, &Value::Null, &h, &url))
                .is_none(),
            "short page"
        );
    }

    #[test]
    fn totals_page_counts_and_has_more() {
        let url = reqwest::Url::parse("http://x/a").unwrap();
        let h = HeaderMap::new();
        let p = paginator(json!({"type": "page_number", "totalPagesPath": "pages", "pageSize": 5}));
        let meta = json!({"pages": 3});
        assert!(
            p.next(
                Some(&Position::new(json!({"page": 2}))),
                2,
                &facts(5, &meta, &h, &url)
            )
            .is_some()
        );
        assert!(
            p.next(
                Some(&Position::new(json!({"page": 3}))),
                3,
                &facts(5, &meta, &h, &url)
            )
            .is_none()
        );
        assert_eq!(p.remaining(&facts(5, &meta, &h, &url)).unwrap().len(), 2);

        let p = paginator(
            json!({"type": "cursor", "cursorPath": "next", "cursorParam": "after", "hasMorePath": "more"}),
        );
        assert!(
            p.next(
                None,
                1,
                &facts(3, &json!({"next": "c2", "more": false}), &h, &url)
            )
            .is_none()
        );
        let n = p
            .next(
                None,
                1,
                &facts(3, &json!({"next": "c2", "more": true}), &h, &url),
            )
            .unwrap();
        assert_eq!(
            p.request(Some(&n)).unwrap().query,
            [("after".into(), "c2".into())]
        );
    }

    #[test]
    fn link_headers_and_header_tokens() {
        let url = reqwest::Url::parse("http://x/api/items?page=1").unwrap();
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::LINK, HeaderValue::from_static("<https://x/api/items?page=1>; rel=\"prev\", </api/items?page=3>; rel=\"next last\""));
        let p = paginator(json!({"type": "link_header"}));
        let next = p.next(None, 1, &facts(2, &Value::Null, &h, &url)).unwrap();
        assert_eq!(next.as_value()["url"], "http://x/api/items?page=3");

        let mut h = HeaderMap::new();
        h.insert("x-continuation", HeaderValue::from_static("tok-2"));
        let p = paginator(json!({"type": "header_token", "responseHeader": "x-continuation"}));
        let next = p.next(None, 1, &facts(2, &Value::Null, &h, &url)).unwrap();
        assert_eq!(
            p.request(Some(&next)).unwrap().headers,
            [("x-continuation".into(), "tok-2".into())]
        );
    }

    #[test]
    fn bad_combinations_are_refused() {
        #[derive(Deserialize)]
        struct W {
            #[serde(deserialize_with = "deserialize_pagination")]
            #[allow(dead_code)]
            p: Option<Pagination>,
        }
        let err = serde_json::from_value::<W>(json!({"p": {"type": "cursor", "skipKey": "x"}}))
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown field `skipKey`"), "{err}");
        let err = serde_json::from_value::<W>(json!({"p": {"type": "pages"}}))
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown variant `pages`"), "{err}");
    }
}
