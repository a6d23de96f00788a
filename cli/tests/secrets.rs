//! Tokens never leak: a set of runs with a source token and a CMS token — a dry
//! run and a partial run at `SLUICEGATE_LOG=trace`, wrong tokens for each side,
//! `--help`, `state show` — and a search of everything they printed and every
//! file they left (dead letters, state, locks) for either token value.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::text;
use serde_json::json;
use sluicegate_examples::cma::{CmaConfig, CmaServer};
use sluicegate_examples::shop::{ShopConfig, ShopServer};

const SHOP_TOKEN: &str = "shop-secret-9f3a0c";
const CMA_TOKEN: &str = "cma-secret-77b1e4";

async fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB")
        .env_remove("SLUICEGATE_CONFIG")
        .env("SLUICEGATE_LOG", "trace");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Every file under `dir`, recursively, as bytes (the configuration excepted:
/// it names environment variables, not values).
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if !path.ends_with("sluicegate.yaml") {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_value_appears_in_logs_errors_reports_or_files() {
    let shop = ShopServer::start(
        ShopConfig {
            orders: 2000,
            token: Some(SHOP_TOKEN.into()),
            ..ShopConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let product = json!({
        "sys": {"id": "product"}, "name": "Product", "displayField": "name",
        "fields": [
            {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
            {"id": "name", "name": "Name", "type": "Symbol"},
        ],
    });
    let cma = CmaServer::start(
        CmaConfig {
            token: CMA_TOKEN.into(),
            content_types: vec![product],
            rate_limit: Some(1000),
            ..CmaConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Product 3's name is too long for a Symbol: one rejected record whose dead
    // letter carries the API's answer.
    std::fs::write(
        dir.path().join("sluicegate.yaml"),
        format!(
            r#"version: 1
sinks:
  cms: {{ type: contentful, spaceId: space1, baseUrl: "{cma}", tokenEnv: CMA_TOKEN }}
syncs:
  - key: products
    sink: cms
    contentType: product
    contentKeyField: sku.en-US
    source:
      type: http
      endPoint: "{shop}/api/products"
      resultsJsonPath: "$.data"
      auth: {{ type: bearer, tokenEnv: SHOP_TOKEN }}
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 20, totalPath: "$.meta.total" }}
    mapping:
      - {{ fieldName: sku.en-US, expression: "{{{{ row.sku }}}}" }}
      - {{ fieldName: name.en-US, expression: "{{{{ row.name }}}}{{% if row.id == 3 %}}{{% for i in range(300) %}}x{{% endfor %}}{{% endif %}}" }}
"#,
            cma = cma.url(),
            shop = shop.url(),
        ),
    )
    .unwrap();
    let sync = ["sync-api", "--key", "products", "--streaming"];
    let apply = ["sync-api", "--key", "products", "--streaming", "--apply"];
    let good = [("SHOP_TOKEN", SHOP_TOKEN), ("CMA_TOKEN", CMA_TOKEN)];
    let mut outputs = Vec::new();

    let dry = run(dir.path(), &sync, &good).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    outputs.push(("dry run", dry));

    let partial = run(dir.path(), &apply, &good).await;
    assert_eq!(partial.status.code(), Some(3), "{}", text(&partial.stderr));
    outputs.push(("partial run", partial));

    let wrong_cms = run(
        dir.path(),
        &apply,
        &[("SHOP_TOKEN", SHOP_TOKEN), ("CMA_TOKEN", "cma-wrong-token")],
    )
    .await;
    assert_ne!(wrong_cms.status.code(), Some(0));
    outputs.push(("wrong CMS token", wrong_cms));

    let wrong_shop = run(
        dir.path(),
        &apply,
        &[("SHOP_TOKEN", "shop-wrong-token"), ("CMA_TOKEN", CMA_TOKEN)],
    )
    .await;
    assert_eq!(wrong_shop.status.code(), Some(1));
    assert!(text(&wrong_shop.stderr).contains("answered 401"));
    outputs.push(("wrong shop token", wrong_shop));

    outputs.push((
        "help",
        run(dir.path(), &["sync-api", "--help"], &good).await,
    ));
    outputs.push((
        "state show",
        run(dir.path(), &["state", "show"], &good).await,
    ));

    let mut searched = 0;
    for (what, out) in &outputs {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let s = text(bytes);
            searched += s.len();
            for token in [SHOP_TOKEN, CMA_TOKEN, "cma-wrong-token", "shop-wrong-token"] {
                assert!(!s.contains(token), "{what}: {stream} shows a token: {s}");
            }
        }
    }
    let mut left = Vec::new();
    files(dir.path(), &mut left);
    let names: Vec<&str> = left.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("dead-letters.ndjson")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.ends_with("state.db")), "{names:?}");
    for (name, bytes) in &left {
        let s = String::from_utf8_lossy(bytes);
        for token in [SHOP_TOKEN, CMA_TOKEN] {
            assert!(!s.contains(token), "{name} holds a token");
        }
    }
    // The trace logs were really searched (requests, responses, retries).
    assert!(searched > 10_000, "only {searched} bytes of output");
}

/// Two ports on 127.0.0.1 that never answer: one refuses connections (bound,
/// then closed), one accepts them and says nothing.
async fn dead_ports() -> (u16, u16) {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    (refused, silent_port)
}

/// An API key sent in the query string never appears when the connection
/// fails (refused, or no answer within the timeout): not in the error line,
/// the text or JSON logs, the report, or `validate`'s output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_api_key_never_appears_when_the_connection_fails() {
    const KEY: &str = "query-key-5d2e91";
    let (refused, silent_port) = dead_ports().await;
    for port in [refused, silent_port] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sluicegate.yaml"),
            format!(
                r#"version: 1
sinks:
  warehouse: {{ type: duckdb, path: out.duckdb }}
syncs:
  - key: orders
    sink: warehouse
    table: orders
    keyField: id
    source:
      type: http
      endPoint: "http://127.0.0.1:{port}/api/orders?page=1"
      resultsJsonPath: "$.data"
      timeoutSecs: 1
      retry: {{ maxAttempts: 2, initialBackoffMs: 10, maxBackoffMs: 20 }}
      auth: {{ type: api_key, name: api_key, location: query, valueEnv: THE_KEY }}
"#
            ),
        )
        .unwrap();
        let env = [("THE_KEY", KEY)];
        let mut outputs = vec![
            run(
                dir.path(),
                &["sync-api", "--all", "--apply", "--report", "report.json"],
                &env,
            )
            .await,
            run(
                dir.path(),
                &["sync-api", "--all", "--apply", "--log-format", "json"],
                &env,
            )
            .await,
            run(dir.path(), &["sync-api", "--all"], &env).await,
            run(dir.path(), &["validate"], &env).await,
        ];
        for out in &outputs {
            assert!(!out.status.success(), "port {port}: the run cannot succeed");
        }
        let stderr = text(&outputs[0].stderr);
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}")),
            "port {port}: the error names the server: {stderr}"
        );
        let mut files_left = Vec::new();
        files(dir.path(), &mut files_left);
        assert!(
            files_left.iter().any(|(p, _)| p.ends_with("report.json")),
            "port {port}: a report was written"
        );
        for out in outputs.drain(..) {
            for bytes in [out.stdout, out.stderr] {
                let t = text(&bytes);
                assert!(!t.contains(KEY), "port {port}: the key leaked: {t}");
            }
        }
        for (path, bytes) in files_left {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(KEY),
                "port {port}: the key leaked into {path}"
            );
        }
    }
}

/// A server for the error paths: `/status/N` answers N, `/bad` answers 200 with
/// a body that is not JSON, `/token` grants `ACCESS` (OAuth 2), `/token-refused`
/// answers 401. It never echoes what it was sent.
async fn error_server() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let (status, body) = if path.starts_with("/token-refused") {
                    (401, r#"{"error":"invalid_client"}"#.to_owned())
                } else if path.starts_with("/token") {
                    (
                        200,
                        format!(
                            r#"{{"access_token":"{ACCESS}","token_type":"bearer","expires_in":3600}}"#
                        ),
                    )
                } else if let Some(code) = path.strip_prefix("/status/") {
                    let code: u16 = code[..3].parse().unwrap();
                    (code, r#"{"error":"no"}"#.to_owned())
                } else {
                    (200, "{\"data\": [1, 2".to_owned())
                };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

const SECRET: &str = "matrix-secret-31c8aa";
const USER: &str = "matrix-user";
const ACCESS: &str = "granted-access-token-6be2";

/// Every auth type, every error path: the secret (and what is derived from it:
/// the basic-auth header value, a granted OAuth 2 token) appears in no output,
/// log line (text or JSON), report or file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_on_any_error_path_for_any_auth_type() {
    use base64::Engine;
    let server = error_server().await;
    let (refused, silent_port) = dead_ports().await;
    let auths = [
        "{ type: bearer, tokenEnv: SECRET }".to_owned(),
        "{ type: basic, usernameEnv: USER, passwordEnv: SECRET }".to_owned(),
        "{ type: api_key, name: X-Api-Key, location: header, valueEnv: SECRET }".to_owned(),
        "{ type: api_key, name: key, location: query, valueEnv: SECRET }".to_owned(),
        format!(
            "{{ type: oauth2_client_credentials, tokenUrl: \"http://127.0.0.1:{server}/token\", clientIdEnv: USER, clientSecretEnv: SECRET }}"
        ),
        format!(
            "{{ type: oauth2_client_credentials, tokenUrl: \"http://127.0.0.1:{server}/token-refused\", clientIdEnv: USER, clientSecretEnv: SECRET }}"
        ),
    ];
    let endpoints = [
        format!("http://127.0.0.1:{refused}/api/orders"),
        format!("http://127.0.0.1:{silent_port}/api/orders"),
        format!("http://127.0.0.1:{server}/status/401"),
        format!("http://127.0.0.1:{server}/status/403"),
        format!("http://127.0.0.1:{server}/status/500"),
        format!("http://127.0.0.1:{server}/bad"),
    ];
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{SECRET}"));
    let forbidden = [SECRET, basic.as_str(), ACCESS];
    for auth in &auths {
        for endpoint in &endpoints {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("sluicegate.yaml"),
                format!(
                    r#"version: 1
sinks:
  warehouse: {{ type: duckdb, path: out.duckdb }}
syncs:
  - key: orders
    sink: warehouse
    keyField: id
    source:
      type: http
      endPoint: "{endpoint}?page=1"
      resultsJsonPath: "$.data"
      timeoutSecs: 1
      retry: {{ maxAttempts: 2, initialBackoffMs: 10, maxBackoffMs: 20 }}
      auth: {auth}
"#
                ),
            )
            .unwrap();
            let env = [("SECRET", SECRET), ("USER", USER)];
            let outputs = [
                run(
                    dir.path(),
                    &["sync-api", "--all", "--apply", "--report", "report.json"],
                    &env,
                )
                .await,
                run(
                    dir.path(),
                    &["sync-api", "--all", "--apply", "--log-format", "json"],
                    &env,
                )
                .await,
                run(dir.path(), &["validate"], &env).await,
            ];
            let case = format!("auth {auth}, endpoint {endpoint}");
            for out in &outputs {
                assert!(!out.status.success(), "{case}: the run cannot succeed");
                for bytes in [&out.stdout, &out.stderr] {
                    let t = text(bytes);
                    for secret in forbidden {
                        assert!(!t.contains(secret), "{case}: {secret} leaked: {t}");
                    }
                }
            }
            let stderr = text(&outputs[0].stderr);
            assert!(stderr.contains("error:"), "{case}: an error line: {stderr}");
            let mut files_left = Vec::new();
            files(dir.path(), &mut files_left);
            for (path, bytes) in files_left {
                let t = String::from_utf8_lossy(&bytes);
                for secret in forbidden {
                    assert!(!t.contains(secret), "{case}: {secret} leaked into {path}");
                }
            }
        }
    }
}
