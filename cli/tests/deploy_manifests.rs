//! The Kubernetes manifests in `deploy/kubernetes/` hold together: an Indexed
//! Job whose completions, parallelism and `--shards` agree, arguments the CLI
//! accepts, a memory limit that fits `--max-memory-mb`, the ConfigMap and
//! Secret it names, a configuration that loads and reads only variables the
//! Secret sets, and a CronJob that runs the same job.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Parser;
use serde_json::Value;
use sluicegate_cli::args::{Cli, Command};
use sluicegate_cli::config_file::ConfigFile;

fn manifest(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Checks a Job spec (of the Job or of the CronJob's template).
fn check_job_spec(spec: &Value, config_map: &str, secret: &str) {
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    assert_eq!(spec["parallelism"].as_u64(), Some(completions));
    let pod = &spec["template"]["spec"];
    assert_eq!(
        pod["restartPolicy"], "Never",
        "Indexed Jobs retry per index"
    );
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let cli = Cli::try_parse_from(std::iter::once("sluicegate".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("the container's arguments: {e}"));
    let Command::SyncApi(sync) = cli.command else {
        panic!("the container runs sync-api");
    };
    assert_eq!(
        sync.shards.map(u64::from),
        Some(completions),
        "--shards = completions"
    );
    assert!(sync.apply && sync.streaming);
    let target_mb = sync.max_memory_mb.unwrap();
    let limit = container["resources"]["limits"]["memory"].as_str().unwrap();
    let limit_mb: u64 = limit.trim_end_matches("Mi").parse().unwrap();
    assert!(
        limit_mb >= target_mb,
        "limit {limit} under --max-memory-mb {target_mb}"
    );
    assert_eq!(sync.config, PathBuf::from("/config/sluicegate.yaml"));
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/config");
    let volume = &pod["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["configMap"]["name"], config_map);
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], secret);
}

#[test]
fn the_manifests_hold_together() {
    let config_map = manifest("configmap.yaml");
    let secret = manifest("secret.example.yaml");
    let job = manifest("job.yaml");
    let cron = manifest("cronjob.yaml");
    assert_eq!(
        (config_map["kind"].as_str(), secret["kind"].as_str()),
        (Some("ConfigMap"), Some("Secret"))
    );
    assert_eq!(
        (job["apiVersion"].as_str(), job["kind"].as_str()),
        (Some("batch/v1"), Some("Job"))
    );
    assert_eq!(
        (cron["apiVersion"].as_str(), cron["kind"].as_str()),
        (Some("batch/v1"), Some("CronJob"))
    );
    let map_name = config_map["metadata"]["name"].as_str().unwrap();
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    check_job_spec(&job["spec"], map_name, secret_name);
    check_job_spec(&cron["spec"]["jobTemplate"]["spec"], map_name, secret_name);
    assert_eq!(
        job["spec"], cron["spec"]["jobTemplate"]["spec"],
        "the CronJob runs the same job"
    );
    assert!(cron["spec"]["schedule"].as_str().is_some());

    // The configuration loads, and every variable it reads is in the Secret.
    let text = config_map["data"]["sluicegate.yaml"].as_str().unwrap();
    let config = ConfigFile::parse(text, std::path::Path::new("/config/sluicegate.yaml")).unwrap();
    assert!(matches!(
        config.state,
        sluicegate_cli::pg_state::StateConfig::Postgres(_)
    ));
    let set: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut read = BTreeSet::new();
    for part in text.split("env.").skip(1) {
        read.insert(
            part.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .next()
                .unwrap(),
        );
    }
    for part in text.split("tokenEnv: ").skip(1) {
        read.insert(
            part.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .next()
                .unwrap(),
        );
    }
    assert!(!read.is_empty());
    assert!(
        read.is_subset(&set),
        "the configuration reads {read:?}, the Secret sets {set:?}"
    );
}
