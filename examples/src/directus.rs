//! A real Directus for tests: started once per process by
//! `scripts/directus-server.sh` (the version pinned in `examples/directus-server`,
//! on a throwaway PostgreSQL database and a free port), stopped when the
//! process exits. `SLUICEGATE_TEST_DIRECTUS="<url> <token>"` points the tests
//! at a running one instead (`scripts/test.sh` starts one for the whole suite).
//! A server that cannot start is a test failure, never a skip.

use std::sync::OnceLock;

use serde_json::{Value, json};

/// A running Directus and its admin token.
#[derive(Debug, Clone)]
pub struct Directus {
    /// Its base URL.
    pub url: String,
    /// A static admin token.
    pub token: String,
}

/// The Directus of this process.
pub fn directus() -> &'static Directus {
    static SERVER: OnceLock<Directus> = OnceLock::new();
    SERVER.get_or_init(Directus::start)
}

impl Directus {
    fn start() -> Self {
        let line = match std::env::var("SLUICEGATE_TEST_DIRECTUS") {
            Ok(line) if !line.trim().is_empty() => line,
            _ => crate::dbserver::run_server_script("directus-server.sh", &[]),
        };
        let mut parts = line.split_whitespace();
        let (Some(url), Some(token)) = (parts.next(), parts.next()) else {
            panic!(
                "Directus did not start (see the messages above); scripts/test.sh installs \
                 and starts it, or set SLUICEGATE_TEST_DIRECTUS=\"<url> <token>\""
            );
        };
        Self {
            url: url.to_owned(),
            token: token.to_owned(),
        }
    }

    /// Calls the REST API as the admin; panics on a failure status.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.try_call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} answered {status}: {body}"
        );
        body
    }

    /// Calls the REST API as the admin; returns the status and the JSON body.
    pub async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("Directus answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates (after dropping an old one) a collection with an integer primary
    /// key `id`, a unique string `sku`, and the given extra fields
    /// (`(name, directus type)`). JSON fields are added one by one: Directus
    /// 12.4 refuses them inside the collection's creation.
    pub async fn fresh_collection(&self, name: &str, extra: &[(&str, &str)]) {
        let _ = self
            .try_call(
                reqwest::Method::DELETE,
                &format!("/collections/{name}"),
                None,
            )
            .await;
        let mut fields = vec![
            json!({"field": "id", "type": "integer",
                   "schema": {"is_primary_key": true, "has_auto_increment": true}}),
            json!({"field": "sku", "type": "string",
                   "schema": {"is_unique": true, "is_nullable": false}}),
        ];
        for (field, kind) in extra.iter().filter(|(_, k)| *k != "json") {
            let schema = if *kind == "decimal" {
                json!({"numeric_precision": 10, "numeric_scale": 2})
            } else {
                json!({})
            };
            fields.push(json!({"field": field, "type": kind, "schema": schema}));
        }
        self.call(
            reqwest::Method::POST,
            "/collections",
            Some(json!({"collection": name, "schema": {}, "fields": fields})),
        )
        .await;
        for (field, _) in extra.iter().filter(|(_, k)| *k == "json") {
            self.call(
                reqwest::Method::POST,
                &format!("/fields/{name}"),
                Some(json!({"field": field, "type": "json", "schema": {},
                            "meta": {"collection": name, "field": field, "special": ["cast-json"]}})),
            )
            .await;
        }
        let mut expected: Vec<&str> = vec!["id", "sku"];
        expected.extend(extra.iter().map(|(field, _)| *field));
        self.await_schema(name, &expected).await;
    }

    /// Waits until Directus's schema shows every field of `collection`.
    ///
    /// Directus caches its schema per process; a request that read the schema
    /// while another created a collection or field can store the old schema
    /// after the change cleared it (tests create collections concurrently). A
    /// stale schema is dropped with `POST /utils/cache/clear?system`.
    async fn await_schema(&self, collection: &str, fields: &[&str]) {
        for _ in 0..100 {
            let (_, body) = self
                .try_call(reqwest::Method::GET, &format!("/fields/{collection}"), None)
                .await;
            let known: Vec<&str> = body["data"]
                .as_array()
                .map(|all| all.iter().filter_map(|f| f["field"].as_str()).collect())
                .unwrap_or_default();
            if fields.iter().all(|field| known.contains(field)) {
                return;
            }
            let _ = self
                .try_call(
                    reqwest::Method::POST,
                    "/utils/cache/clear?system=true",
                    None,
                )
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "Directus's schema did not show the fields {fields:?} of '{collection}' within 10 s"
        );
    }

    /// Every item of a collection, by id.
    pub async fn items(&self, collection: &str) -> Vec<Value> {
        let body = self
            .call(
                reqwest::Method::GET,
                &format!("/items/{collection}?limit=-1&sort=id"),
                None,
            )
            .await;
        body["data"].as_array().cloned().unwrap_or_default()
    }
}
