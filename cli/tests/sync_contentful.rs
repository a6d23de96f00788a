//! End-to-end: `sluicegate sync-api --key products` from the example shop API
//! into the Contentful Management API emulator, both on 127.0.0.1.

mod common;

use common::{summary_row, text};

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};
use sluicegate_examples::cma::{CmaConfig, CmaFault, CmaServer};
use sluicegate_examples::shop::{Resource, ShopConfig, ShopServer};

const TOKEN: &str = "cma-secret-token";

fn product_type() -> Value {
    json!({
        "sys": {"id": "product"}, "name": "Product", "displayField": "name",
        "fields": [
            {"id": "sku", "name": "SKU", "type": "Symbol", "required": true},
            {"id": "name", "name": "Name", "type": "Symbol", "localized": true},
            {"id": "price", "name": "Price", "type": "Number"},
            {"id": "kind", "name": "Kind", "type": "Symbol"},
            {"id": "tags", "name": "Tags", "type": "Array", "items": {"type": "Symbol"}},
            {"id": "width", "name": "Width (cm)", "type": "Integer"},
            {"id": "notes", "name": "Editor notes", "type": "Text"},
        ],
    })
}

fn cute_type() -> Value {
    json!({
        "sys": {"id": "cuteContentSyncApi"}, "name": "cute sync-api", "displayField": "key",
        "fields": [
            {"id": "key", "name": "Key", "type": "Symbol", "required": true},
            {"id": "order", "name": "Order", "type": "Integer"},
            {"id": "yaml", "name": "YAML", "type": "Text"},
            {"id": "sourceType", "name": "Source type", "type": "Symbol"},
        ],
    })
}

struct Fixture {
    dir: tempfile::TempDir,
    shop: ShopServer,
    cma: CmaServer,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_faults(Vec::new()).await
    }

    /// A fixture whose emulator injects `faults`.
    async fn with_faults(faults: Vec<CmaFault>) -> Self {
        let shop = ShopServer::start(
            ShopConfig {
                orders: 2000,
                ..ShopConfig::default()
            },
            "127.0.0.1:0",
        )
        .await
        .unwrap();
        let cma = CmaServer::start(
            CmaConfig {
                token: TOKEN.into(),
                locales: vec![("en-US".into(), true), ("de-DE".into(), false)],
                content_types: vec![product_type(), cute_type()],
                rate_limit: Some(500),
                faults,
                ..CmaConfig::default()
            },
            "127.0.0.1:0",
        )
        .await
        .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            shop,
            cma,
        }
    }

    /// Writes the configuration; `name_expression` lets a test change one record.
    fn config(&self, name_expression: &str) -> PathBuf {
        let text = format!(
            r#"version: 1
sinks:
  cms:
    type: contentful
    spaceId: space1
    baseUrl: "{cma}"
    tokenEnv: CMA_TOKEN
syncs:
  - key: products
    sink: cms
    contentType: product
    contentKeyField: sku.en-US
    source:
      type: http
      endPoint: "{shop}/api/products"
      resultsJsonPath: "$.data"
      pagination: {{ skipKey: offset, limitKey: limit, pageSize: 20, totalPath: "$.meta.total" }}
    mapping:
      - {{ fieldName: sku.en-US, expression: "{{{{ row.sku }}}}" }}
      - {{ fieldName: name.en-US, expression: "{name_expression}" }}
      - {{ fieldName: price.en-US, expression: "{{{{ row.price }}}}" }}
      - {{ fieldName: kind.en-US, expression: "{{{{ row.type }}}}" }}
      - {{ fieldName: "tags.en-US[]", expression: "{{{{ row.tags | join('|') }}}}" }}
      - {{ fieldName: width.en-US, expression: "{{{{ row.dimensions.width_cm }}}}" }}
"#,
            cma = self.cma.url(),
            shop = self.shop.url(),
        );
        let path = self.dir.path().join("sluicegate.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn sync(&self, name_expression: &str, args: &[&str]) -> Output {
        self.command("sync-api", name_expression, args).await
    }

    /// Runs `sluicegate <command> --config … --key products --streaming <args>`.
    async fn command(&self, command: &str, name_expression: &str, args: &[&str]) -> Output {
        let config = self.config(name_expression);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
        cmd.args([
            command,
            "--config",
            config.to_str().unwrap(),
            "--key",
            "products",
            "--streaming",
        ])
        .args(args)
        .env("CMA_TOKEN", TOKEN)
        .env_remove("SLUICEGATE_MAX_MEMORY_MB");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    fn products(&self) -> u64 {
        self.shop.dataset().total(Resource::Products)
    }

    fn entry_by_sku(&self, sku: &str) -> Value {
        self.cma
            .entries()
            .into_values()
            .find(|e| e["fields"]["sku"]["en-US"] == sku)
            .unwrap_or_else(|| panic!("no entry with sku {sku}"))
    }
}

const NAME: &str = "{{ row.name }}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_creates_a_second_writes_nothing_and_a_changed_record_updates_one_entry() {
    let fx = Fixture::new().await;
    let n = fx.products();

    let out = fx.sync(NAME, &["--apply"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
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
    assert!(stdout.contains(&format!("published {n}")), "{stdout}");
    assert_eq!(fx.cma.entries().len() as u64, n);
    let product = fx.shop.dataset().record_value(Resource::Products, 0);
    let mug = fx.entry_by_sku(product["sku"].as_str().unwrap());
    assert_eq!(mug["fields"]["name"]["en-US"], product["name"]);
    assert_eq!(mug["fields"]["price"]["en-US"], product["price"]);
    assert_eq!(
        mug["fields"]["width"]["en-US"],
        product["dimensions"]["width_cm"]
    );
    assert!(mug["sys"]["publishedVersion"].is_number(), "published");

    let before = fx.cma.counts();
    let out = fx.sync(NAME, &["--apply"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        summary_row(&stdout, "products")[3..6],
        ["0", "0", &n.to_string()],
        "{stdout}"
    );
    assert_eq!(
        fx.cma.counts().writes,
        before.writes,
        "no write request at all"
    );

    // An editor adds notes and a German name to product 7; then its source
    // record changes (here: through the mapping) and only it is updated.
    let sku7 = fx.shop.dataset().record_value(Resource::Products, 6)["sku"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = fx.entry_by_sku(&sku7)["sys"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fx.cma.edit_entry(&id, |e| {
        e["fields"]["notes"] = json!({"en-US": "checked by Ana"});
        e["fields"]["name"]["de-DE"] = json!("Becher sieben");
    });
    let before = fx.cma.counts();
    let changed = "{{ row.name }}{% if row.id == 7 %} (new edition){% endif %}";
    let out = fx
        .sync(changed, &["--apply", "--verbosity", "detailed"])
        .await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        summary_row(&stdout, "products")[3..6],
        ["0", "1", &(n - 1).to_string()],
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("products: 'product' '{sku7}' is updated")),
        "{stdout}"
    );
    assert!(stdout.contains("(new edition)'"), "{stdout}");
    assert_eq!(
        fx.cma.counts().writes - before.writes,
        2,
        "one PUT and one bulk publish"
    );
    let entry = fx.entry_by_sku(&sku7);
    assert!(
        entry["fields"]["name"]["en-US"]
            .as_str()
            .unwrap()
            .ends_with(" (new edition)")
    );
    assert_eq!(
        entry["fields"]["name"]["de-DE"], "Becher sieben",
        "other locales survive"
    );
    assert_eq!(
        entry["fields"]["notes"]["en-US"], "checked by Ana",
        "unmapped fields survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_changes_but_writes_and_publishes_nothing() {
    let fx = Fixture::new().await;
    let out = fx.sync(NAME, &["--verbosity", "detailed"]).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("dry run"), "{stdout}");
    let sku = fx.shop.dataset().record_value(Resource::Products, 0)["sku"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        stdout.contains(&format!("products: 'product' '{sku}' will be created")),
        "{stdout}"
    );
    assert_eq!(
        summary_row(&stdout, "products")[3],
        fx.products().to_string()
    );
    let counts = fx.cma.counts();
    assert_eq!((counts.writes, counts.published), (0, 0));
    assert!(fx.cma.entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_what_it_would_reject_and_writes_no_dead_letter() {
    let fx = Fixture::new().await;
    // Product 3's mapping fails: a rejection at the map stage, which a dry run sees too.
    let broken = "{{ row.name }}{% if row.id == 3 %}{{ no_such_function() }}{% endif %}";
    let out = fx.sync(broken, &[]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("products: a dry run would reject record")
            && stderr.contains("at the map stage"),
        "{stderr}"
    );
    assert!(
        stdout.contains("rejected 1 (a dry run: listed above, not written)"),
        "{stdout}"
    );
    assert!(
        !fx.dir.path().join(".sluicegate").exists(),
        "a dry run writes nothing anywhere"
    );
    assert!(fx.cma.entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_entry_goes_to_the_dead_letter_file_and_the_rest_is_synced() {
    let fx = Fixture::new().await;
    // Product 3's name is made longer than a Symbol allows (256 characters).
    let long =
        "{{ row.name }}{% if row.id == 3 %}{% for i in range(300) %}x{% endfor %}{% endif %}";
    let out = fx.sync(long, &["--apply", "--no-publish"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "partial success: stderr {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert_eq!(summary_row(&stdout, "products")[6], "1", "{stdout}");
    assert!(stdout.contains("rejected 1 (written to"), "{stdout}");
    assert_eq!(fx.cma.entries().len() as u64, fx.products() - 1);
    assert_eq!(fx.cma.counts().published, 0, "--no-publish");

    let dead =
        std::fs::read_to_string(fx.dir.path().join(".sluicegate/dead-letters.ndjson")).unwrap();
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let sku3 = fx.shop.dataset().record_value(Resource::Products, 2)["sku"].clone();
    assert_eq!(lines[0]["syncKey"], "products");
    assert_eq!(lines[0]["stage"], "write");
    assert_eq!(lines[0]["key"], sku3);
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Symbol is longer than 256 characters"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[0]["record"]["sku.en-US"], sku3,
        "the mapped record is kept"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(fx.dir.path().join(".sluicegate/dead-letters.ndjson"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }
    assert!(!text(&out.stdout).contains(TOKEN) && !text(&out.stderr).contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_mistakes_fail_before_any_request() {
    let fx = Fixture::new().await;
    let out = fx.sync("{{ row.name | shout }}", &["--apply"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("syncs[products].invalid template mapping[1].expression: unknown filter"),
        "{stderr}"
    );
    assert_eq!(fx.cma.counts().requests, 0);
    assert_eq!(fx.shop.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cute_entry_kept_in_the_space_runs_unchanged() {
    let fx = Fixture::new().await;
    let yaml = format!(
        "contentType: product\ncontentKeyField: sku.en-US\ncontentDisplayField: name.en-US\nendPoint: \"{shop}/api/products\"\nresultsJsonPath: data\npagination: {{ skipKey: page, limitKey: per_page, pageSize: 20, limitMax: 20 }}\nmapping:\n  - {{ fieldName: sku.en-US, expression: \"{{{{ row.sku }}}}\" }}\n  - {{ fieldName: name.en-US, expression: \"{{{{ row.name | string.upcase }}}}\" }}\n",
        shop = fx.shop.url()
    );
    fx.cma
        .seed_entry(
            "cuteContentSyncApi",
            "sync-products",
            json!({"key": {"en-US": "dataProducts"}, "order": {"en-US": 1}, "yaml": {"en-US": yaml}, "sourceType": {"en-US": "restapi"}}),
        )
        .unwrap();
    let config = format!(
        "version: 1\nsinks:\n  cms: {{ type: contentful, spaceId: space1, baseUrl: \"{}\", tokenEnv: CMA_TOKEN }}\ncuteEntries: {{ sink: cms }}\n",
        fx.cma.url()
    );
    let path = fx.dir.path().join("cute.yaml");
    std::fs::write(&path, config).unwrap();
    let run = |key: &'static str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
        cmd.args([
            "sync-api",
            "--config",
            path.to_str().unwrap(),
            "--key",
            key,
            "--streaming",
            "--apply",
        ])
        .env("CMA_TOKEN", TOKEN);
        cmd
    };
    let mut cmd = run("dataProducts");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        summary_row(&stdout, "dataProducts")[3],
        fx.products().to_string(),
        "{stdout}"
    );
    assert_eq!(fx.cma.entries().len() as u64, fx.products() + 1);
    let first = fx.shop.dataset().record_value(Resource::Products, 0);
    let entry = fx.entry_by_sku(first["sku"].as_str().unwrap());
    assert_eq!(
        entry["fields"]["name"]["en-US"],
        first["name"].as_str().unwrap().to_uppercase(),
        "Scriban's string.upcase"
    );

    let mut cmd = run("dataNothing");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("No API sync entry 'cuteContentSyncApi' with key 'dataNothing' was found.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_errors_stops_a_sync_that_rejects_too_much() {
    let fx = Fixture::new().await;
    // Every product with an even id gets a name longer than a Symbol allows.
    let long =
        "{{ row.name }}{% if row.id % 2 == 0 %}{% for i in range(300) %}x{% endfor %}{% endif %}";
    let half = fx.products() / 2;

    // Within the limit: partial success.
    let out = fx
        .sync(long, &["--apply", "--no-publish", "--max-errors", "40"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(fx.cma.entries().len() as u64, fx.products() - half);

    // Over the limit: the sync stops after the batch that crossed it.
    let fx = Fixture::new().await;
    let out = fx
        .sync(
            long,
            &[
                "--apply",
                "--no-publish",
                "--max-errors",
                "5",
                "--batch-size",
                "10",
            ],
        )
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("too many rejected records: 10 of")
            && stderr.contains("over the limit of 5")
            && stderr.contains("raise --max-errors"),
        "{stderr}"
    );
    assert_eq!(
        fx.cma.entries().len(),
        10,
        "two batches of ten were written, then it stopped"
    );
    let dead =
        std::fs::read_to_string(fx.dir.path().join(".sluicegate/dead-letters.ndjson")).unwrap();
    assert_eq!(dead.lines().count(), 10, "each rejected record is kept");

    // A percentage of what was read, judged at the end for a short stream.
    let fx = Fixture::new().await;
    let out = fx
        .sync(long, &["--apply", "--no-publish", "--max-errors", "20%"])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("over the limit of 20%"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_syncs_the_dead_letters_once_the_cause_is_fixed() {
    // The CMS refuses the first write once (a 400 it will not give again): that
    // record is kept as mapped. Product 5's name template fails: that record is
    // kept as read from the source.
    let fx = Fixture::with_faults(vec![CmaFault {
        method: Some("PUT".into()),
        path_contains: "/entries/".into(),
        status: 400,
        times: 1,
    }])
    .await;
    let broken = "{{ row.name }}{% if row.id == 5 %}{{ no_such_function() }}{% endif %}";
    let out = fx.sync(broken, &["--apply"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let dead_path = fx.dir.path().join(".sluicegate/dead-letters.ndjson");
    let dead = std::fs::read_to_string(&dead_path).unwrap();
    let stages: Vec<String> = dead
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["stage"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(stages.len(), 2, "{dead}");
    assert!(stages.contains(&"map".to_owned()) && stages.contains(&"write".to_owned()));
    // Another key's dead letter, which a re-drive of products must keep.
    let other = json!({"syncKey": "orders", "stage": "write", "key": "9", "reason": "x", "record": {"id": 9}});
    std::fs::write(&dead_path, format!("{dead}{other}\n")).unwrap();
    assert_eq!(fx.cma.entries().len() as u64, fx.products() - 2);

    // A dry run re-drive writes nothing and keeps the file.
    let out = fx.command("redrive", NAME, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("redrive: dry run"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(fx.cma.entries().len() as u64, fx.products() - 2);
    assert_eq!(
        std::fs::read_to_string(&dead_path).unwrap().lines().count(),
        3
    );

    // Fixed mapping: both are created, only the other key's letter is left.
    let out = fx.command("redrive", NAME, &["--apply"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        summary_row(&stdout, "products")[2..4],
        ["2", "2"],
        "{stdout}"
    );
    assert_eq!(fx.cma.entries().len() as u64, fx.products());
    for index in 0..fx.products() {
        let want = fx.shop.dataset().record_value(Resource::Products, index);
        let entry = fx.entry_by_sku(want["sku"].as_str().unwrap());
        assert_eq!(entry["fields"]["name"]["en-US"], want["name"]);
    }
    let left = std::fs::read_to_string(&dead_path).unwrap();
    assert_eq!(left, format!("{other}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_token_and_the_content_type_without_writing() {
    let fx = Fixture::new().await;
    let config = fx.config(NAME);
    let validate = |token: &str, config: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
        cmd.args(["validate", "--config", config.to_str().unwrap()])
            .env("CMA_TOKEN", token);
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let out = validate(TOKEN, &config).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(stdout.contains("products: ok"), "{stdout}");
    assert!(
        stdout.contains("mapping: 20 of 20 records mapped, 0 filtered out, 0 rejected"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target 'product' accepted a dry-run write of the first batch: 20 new, 0 changed, 0 unchanged, 0 rejected; nothing written"),
        "{stdout}"
    );

    let out = validate("not-the-token", &config).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("products: FAILED"), "{stdout}");
    assert!(!stdout.contains("not-the-token"), "{stdout}");

    let missing = std::fs::read_to_string(&config)
        .unwrap()
        .replace("contentType: product", "contentType: gadget");
    std::fs::write(&config, missing).unwrap();
    let out = validate(TOKEN, &config).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("gadget"), "{stdout}");
    assert_eq!(fx.cma.counts().writes, 0, "validate never writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_memory_pressure_the_lookup_cache_is_dropped_and_nothing_is_duplicated() {
    let fx = Fixture::new().await;
    let n = fx.products();
    let report = fx.dir.path().join("run.json");
    // A target the process cannot fit and a threshold far below what it uses:
    // every sample is a flush request.
    let args = [
        "--apply",
        "--max-memory-mb",
        "20",
        "--flush-threshold-percent",
        "0.05",
        "--memory-check-interval",
        "0.05",
        "--page-size",
        "10",
        "--batch-size",
        "10",
        "--max-concurrent-chunks",
        "2",
        "--report",
        report.to_str().unwrap(),
    ];
    let out = fx.sync(NAME, &args).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(fx.cma.entries().len() as u64, n, "every product once");
    let figures: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let monitor = &figures["memoryMonitor"];
    assert!(monitor["sinkReliefs"].as_u64().unwrap() >= 1, "{monitor}");
    assert!(
        monitor["cacheEntriesDropped"].as_u64().unwrap() >= 1,
        "the lookup cache was emptied: {monitor}"
    );
    assert_eq!(figures["stats"]["pages"], n.div_ceil(10), "pages of 10");
    assert_eq!(figures["tuning"]["maxConcurrentChunks"], 2);

    // Again under the same pressure: every entry is found (looked up again after
    // each emptied cache), none is created or written twice.
    let before = fx.cma.counts();
    let out = fx.sync(NAME, &args).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        summary_row(&stdout, "products")[3..6],
        ["0", "0", &n.to_string()],
        "{stdout}"
    );
    assert_eq!(fx.cma.counts().writes, before.writes, "no writes");
    assert_eq!(fx.cma.entries().len() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_fails_the_run_and_its_letter_stays_until_it_is_published() {
    // The CMS refuses every bulk publish, and single publishes (422) for the
    // first run and the first re-drive: one per product, twice.
    let n = Fixture::new().await.products();
    let fx = Fixture::with_faults(vec![
        CmaFault {
            method: Some("POST".into()),
            path_contains: "/bulk_actions".into(),
            status: 422,
            times: 1000,
        },
        CmaFault {
            method: Some("PUT".into()),
            path_contains: "/published".into(),
            status: 422,
            times: u32::try_from(2 * n).unwrap(),
        },
    ])
    .await;
    let dead_path = fx.dir.path().join(".sluicegate/dead-letters.ndjson");
    let letters = || -> Vec<Value> {
        std::fs::read_to_string(&dead_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let drafts = |fx: &Fixture| {
        fx.cma
            .entries()
            .values()
            .filter(|e| e["sys"]["publishedVersion"].is_null())
            .count() as u64
    };

    let out = fx.sync(NAME, &["--apply"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout} {}", text(&out.stderr));
    let row = summary_row(&stdout, "products");
    assert_eq!(
        (row[3].as_str(), row[6].as_str()),
        ("0", n.to_string().as_str()),
        "{stdout}"
    );
    let dead = letters();
    assert_eq!(dead.len() as u64, n);
    assert!(
        dead.iter().all(|l| l["stage"] == "publish"
            && l["key"].is_string()
            && l["reason"].as_str().is_some_and(|r| r.contains("422"))),
        "{dead:?}"
    );
    assert_eq!(drafts(&fx), n, "written, not live");

    // A re-drive while the CMS still refuses: nothing delivered, nothing removed.
    let out = fx.command("redrive", NAME, &["--apply"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert_eq!(letters().len() as u64, n, "the letters stay");
    assert_eq!(drafts(&fx), n);

    // The CMS accepts again: a plain re-sync publishes the unchanged drafts.
    let out = fx.sync(NAME, &["--apply"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    let row = summary_row(&stdout, "products");
    assert_eq!(
        (row[4].as_str(), row[6].as_str()),
        (n.to_string().as_str(), "0"),
        "{stdout}"
    );
    assert_eq!(drafts(&fx), 0);
    for e in fx.cma.entries().values() {
        assert_eq!(
            e["sys"]["publishedVersion"].as_u64().map(|p| p + 1),
            e["sys"]["version"].as_u64(),
            "live: {e}"
        );
    }
    // The re-drive now finds them delivered and empties the file.
    let out = fx.command("redrive", NAME, &["--apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(letters().is_empty());
}
