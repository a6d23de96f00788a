//! A fault-injecting HTTP/1.1 proxy for tests: put it in front of a real server
//! (the shop API, the Contentful emulator) and the requests that match a rule get
//! a fault instead of, or on top of, the real answer — statuses with rate-limit
//! headers, slow answers, connection resets, truncated bodies, malformed JSON,
//! a wrong content type, or any body a test gives. Everything else is forwarded
//! unchanged.
//!
//! Each client connection is served one request at a time; a forwarded request
//! is sent upstream with `Connection: close`, and the upstream answer (which then
//! says `Connection: close` too) is copied back before the client connection is
//! closed, so the proxy never has to parse a response.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a matching request gets.
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// This status, with these extra headers, and a small JSON error body.
    Status(u16, Vec<(String, String)>),
    /// The real answer, after this delay.
    Slow(Duration),
    /// The connection is reset (TCP RST) before any answer.
    Reset,
    /// The real answer's headers and the first half of its body, then the
    /// connection closes (the body is shorter than its `Content-Length`).
    Truncate,
    /// `200`, `application/json`, a body that is not valid JSON.
    MalformedJson,
    /// `200` with an HTML maintenance page as `text/html`.
    Html,
    /// `200`, `application/json`, this body.
    Body(String),
}

/// One rule: requests whose method matches (if given) and whose path and query
/// contain `path_contains` get `kind`, `times` times (then pass through).
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// `GET`, `PUT`, ...; any when `None`.
    pub method: Option<String>,
    /// A substring of the request target (path and query).
    pub path_contains: String,
    /// The fault.
    pub kind: FaultKind,
    /// How many matching requests get it.
    pub times: u32,
}

impl FaultRule {
    /// A rule for requests of any method whose target contains `path_contains`.
    pub fn new(path_contains: &str, kind: FaultKind, times: u32) -> Self {
        Self {
            method: None,
            path_contains: path_contains.to_owned(),
            kind,
            times,
        }
    }

    /// Only for requests of `method`.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }
}

struct State {
    upstream: SocketAddr,
    rules: Mutex<Vec<FaultRule>>,
    injected: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free port of 127.0.0.1 in front of `upstream`.
    pub async fn start(upstream: SocketAddr, rules: Vec<FaultRule>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            rules: Mutex::new(rules),
            injected: AtomicU64::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &state).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The proxy's base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and `Content-Length` body); `None` at end of stream.
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}

fn take_fault(state: &State, method: &str, target: &str) -> Option<FaultKind> {
    let mut rules = state
        .rules
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rule = rules.iter_mut().find(|r| {
        r.times > 0
            && r.method.as_deref().is_none_or(|m| m == method)
            && target.contains(&r.path_contains)
    })?;
    rule.times -= 1;
    state.injected.fetch_add(1, Ordering::Relaxed);
    Some(rule.kind.clone())
}

async fn serve(mut client: TcpStream, state: &State) -> std::io::Result<()> {
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    let line =
        String::from_utf8_lossy(&request[..request.iter().position(|b| *b == b'\r').unwrap_or(0)])
            .into_owned();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let reply = |status: u16, content_type: &str, headers: &[(String, String)], body: &str| {
        let mut out = format!(
            "HTTP/1.1 {status} Injected\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(body);
        out.into_bytes()
    };
    let fault = take_fault(state, method, target);
    let response = match fault {
        Some(FaultKind::Status(status, headers)) => reply(
            status,
            "application/json",
            &headers,
            &format!(r#"{{"error":"injected {status}","message":"injected fault"}}"#),
        ),
        Some(FaultKind::Reset) => {
            client.set_zero_linger()?;
            drop(client);
            return Ok(());
        }
        Some(FaultKind::MalformedJson) => reply(
            200,
            "application/json",
            &[],
            r#"{"data": [{"id": 1, "name": "broken"#,
        ),
        Some(FaultKind::Html) => reply(
            200,
            "text/html; charset=utf-8",
            &[],
            "<html><body><h1>Down for maintenance</h1></body></html>",
        ),
        Some(FaultKind::Body(body)) => reply(200, "application/json", &[], &body),
        Some(FaultKind::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            forward(state, &request).await?
        }
        Some(FaultKind::Truncate) => {
            let full = forward(state, &request).await?;
            let head_end = full
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(full.len(), |i| i + 4);
            let body = full.len() - head_end;
            full[..head_end + body / 2].to_vec()
        }
        None => forward(state, &request).await?,
    };
    client.write_all(&response).await?;
    client.shutdown().await
}

/// Sends `request` upstream with `Connection: close`; returns the whole answer.
async fn forward(state: &State, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(request.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&request[..head_end - 2]);
    let mut rewritten: String = head
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    rewritten.push_str("connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(state.upstream).await?;
    upstream.write_all(rewritten.as_bytes()).await?;
    upstream.write_all(&request[head_end..]).await?;
    let mut answer = Vec::new();
    upstream.read_to_end(&mut answer).await?;
    Ok(answer)
}
