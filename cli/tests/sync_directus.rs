//! End-to-end: `sluicegate sync-api` with the example configuration
//! `examples/directus.yaml`, from the example shop API into a real Directus
//! (see `sluicegate_examples::directus`).

mod common;

use common::{summary_row, text};

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use sluicegate_examples::directus::directus;
use sluicegate_examples::shop::{Resource, ShopConfig, ShopServer};

struct Fixture {
    dir: tempfile::TempDir,
    shop: ShopServer,
    collection: String,
}

const NAME: &str = "{{ row.name }}";

impl Fixture {
    /// A shop and an empty collection `collection` with the example's fields.
    async fn new(collection: &str) -> Self {
        let shop = ShopServer::start(ShopConfig::default(), "127.0.0.1:0")
            .await
            .unwrap();
        directus()
            .fresh_collection(
                collection,
                &[
                    ("name", "string"),
                    ("kind", "string"),
                    ("price", "decimal"),
                    ("width_cm", "integer"),
                    ("tags", "json"),
                ],
            )
            .await;
        Self {
            dir: tempfile::tempdir().unwrap(),
            shop,
            collection: collection.to_owned(),
        }
    }

    /// The example configuration, into this fixture's collection, with the
    /// name's expression replaced.
    fn config(&self, name_expression: &str) -> PathBuf {
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/directus.yaml"
        ))
        .unwrap();
        let text = example
            .replace(
                "contentType: products",
                &format!("contentType: {}", self.collection),
            )
            .replace(
                r#"expression: "{{ row.name }}""#,
                &format!(r#"expression: "{name_expression}""#),
            );
        let path = self.dir.path().join("directus.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn sync(&self, name_expression: &str, args: &[&str]) -> Output {
        let config = self.config(name_expression);
        let server = directus();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
        cmd.args([
            "sync-api",
            "--config",
            config.to_str().unwrap(),
            "--key",
            "products",
            "--streaming",
        ])
        .args(args)
        .env("SHOP_API_URL", self.shop.url())
        .env("DIRECTUS_URL", &server.url)
        .env("DIRECTUS_TOKEN", &server.token)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    fn products(&self) -> u64 {
        self.shop.dataset().total(Resource::Products)
    }

    async fn items(&self) -> Vec<Value> {
        directus().items(&self.collection).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_creates_a_second_writes_nothing_and_a_changed_record_updates_one_item() {
    let fx = Fixture::new("e2e_products").await;
    let n = fx.products();

    let out = fx.sync(NAME, &["--apply"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // key, rows, read, new, updated, unchanged, failed
    assert_eq!(
        summary_row(&stdout, "products")[2..7],
        [
            n.to_string(),
            n.to_string(),
            "0".into(),
            "0".into(),
            "0".into()
        ],
        "{stdout}"
    );
    let items = fx.items().await;
    assert_eq!(items.len() as u64, n);
    let product = fx.shop.dataset().record_value(Resource::Products, 0);
    let item = items.iter().find(|i| i["sku"] == product["sku"]).unwrap();
    assert_eq!(item["name"], product["name"]);
    assert_eq!(item["kind"], product["type"]);
    let price: f64 = item["price"].as_str().unwrap().parse().unwrap();
    assert_eq!(price, product["price"].as_f64().unwrap());
    assert_eq!(item["width_cm"], product["dimensions"]["width_cm"]);
    assert_eq!(item["tags"], product["tags"]);

    // Unchanged: no writes at all.
    let out = fx.sync(NAME, &["--apply"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        summary_row(&stdout, "products")[3..6],
        ["0", "0", &n.to_string()],
        "{stdout}"
    );
    assert_eq!(fx.items().await, items, "nothing was written");

    // One source record changes: exactly that item is updated.
    let sku = product["sku"].as_str().unwrap();
    let changed = format!("{{{{ row.name }}}}{{% if row.sku == '{sku}' %}} (new){{% endif %}}");
    let out = fx.sync(&changed, &["--apply"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        summary_row(&stdout, "products")[3..6],
        ["0", "1", &(n - 1).to_string()],
        "{stdout}"
    );
    let after = fx.items().await;
    for (old, new) in items.iter().zip(&after) {
        if old["sku"] == sku {
            assert_eq!(
                new["name"],
                format!("{} (new)", product["name"].as_str().unwrap())
            );
            assert_eq!(new["price"], old["price"], "unmapped changes only");
        } else {
            assert_eq!(old, new);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing() {
    let fx = Fixture::new("e2e_dry_run").await;
    let out = fx.sync(NAME, &["--verbosity", "detailed"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("dry run"), "{stdout}");
    assert_eq!(
        summary_row(&stdout, "products")[3],
        fx.products().to_string()
    );
    assert!(fx.items().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_item_goes_to_the_dead_letter_file_with_directus_message() {
    let fx = Fixture::new("e2e_rejected").await;
    // Product 3's name is longer than the column (varchar 255).
    let long =
        "{{ row.name }}{% if row.id == 3 %}{% for i in range(300) %}x{% endfor %}{% endif %}";
    let out = fx.sync(long, &["--apply"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "partial success: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert_eq!(summary_row(&stdout, "products")[6], "1", "{stdout}");
    assert_eq!(fx.items().await.len() as u64, fx.products() - 1);
    let dead =
        std::fs::read_to_string(fx.dir.path().join(".sluicegate/dead-letters.ndjson")).unwrap();
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    let sku3 = fx.shop.dataset().record_value(Resource::Products, 2)["sku"].clone();
    assert_eq!(lines[0]["key"], sku3);
    assert_eq!(lines[0]["stage"], "write");
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("VALUE_TOO_LONG") && reason.contains("is too long"),
        "{reason}"
    );
    assert!(
        !dead.contains(&directus().token),
        "no token in dead letters"
    );
}
