//! The `http` source passes the testkit's source suite against the example shop API.

use std::sync::Arc;

use serde_json::json;
use sluicegate_adapters_http::{HttpSource, HttpSourceConfig};
use sluicegate_core::{BuildContext, Source, parse_section};
use sluicegate_examples::shop::{ShopConfig, ShopServer};
use sluicegate_testkit::{SourceCase, check_failing_source, check_source};

fn source(section: serde_json::Value) -> Arc<dyn Source> {
    let config: HttpSourceConfig = parse_section(section, "source").unwrap();
    let ctx = BuildContext::new("conformance", true);
    config.validate(&ctx).unwrap();
    Arc::new(HttpSource::new(&config, &ctx).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_pages_conform() {
    let config = ShopConfig {
        orders: 1_500,
        ..ShopConfig::default()
    };
    let api = ShopServer::start(config, "127.0.0.1:0").await.unwrap();
    let paged = source(json!({
        "endPoint": format!("{}/api/orders", api.url()),
        "resultsJsonPath": "$.data",
        "pagination": {"pageSize": 100, "totalPath": "$.meta.total"},
    }));
    check_source(SourceCase::new("http offset pages", paged, 1_500).small_budget(32 * 1024)).await;

    let parallel = source(json!({
        "endPoint": format!("{}/api/orders", api.url()),
        "resultsJsonPath": "$.data",
        "concurrency": 4,
        "pagination": {"pageSize": 100, "totalPath": "$.meta.total"},
    }));
    check_source(SourceCase::new("http parallel pages", parallel, 1_500).small_budget(32 * 1024))
        .await;

    // One streamed response: decoded as it arrives, not resumable.
    let export = source(json!({
        "endPoint": format!("{}/api/orders/export", api.url()),
        "resultsJsonPath": "data",
    }));
    check_source(
        SourceCase::new("http streamed export", export, 1_500)
            .not_resumable()
            .small_budget(32 * 1024),
    )
    .await;

    let missing = source(json!({"endPoint": format!("{}/api/nothing", api.url())}));
    let err = check_failing_source("http 404", missing).await;
    assert!(err.to_string().contains("404"), "{err}");
}
