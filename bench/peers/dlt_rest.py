"""dlt's `rest_api` source into DuckDB: the six resources of the example shop API.

    python dlt_rest.py URL DUCKDB_FILE WORKDIR CONFIG

CONFIG picks dlt's settings: `default` (dlt's defaults: insert_values loader files),
`parquet` (Parquet loader files, 100k-item buffers and file rotation), or
`parquet-parallel` (the same, with two normalize workers and a parallelized source).
Nested values are kept as JSON (max_table_nesting=0), as Sluicegate stores them.
Prints {"rows": <rows loaded into the six tables>} as JSON.
"""

import json
import os
import sys

url, database, workdir, config = sys.argv[1:5]
os.environ["DLT_DATA_DIR"] = os.path.join(workdir, "dlt-data")
os.environ["DLT_PROJECT_DIR"] = workdir
os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
if config in ("parquet", "parquet-parallel"):
    for stage in ("EXTRACT", "NORMALIZE"):
        os.environ[f"{stage}__DATA_WRITER__BUFFER_MAX_ITEMS"] = "100000"
        os.environ[f"{stage}__DATA_WRITER__FILE_MAX_ITEMS"] = "100000"
if config == "parquet-parallel":
    os.environ["NORMALIZE__WORKERS"] = "2"

import dlt  # noqa: E402  (the settings above are read when dlt is imported)
from dlt.sources.rest_api import rest_api_source  # noqa: E402

RESOURCES = ["customers", "orders", "items", "products", "supplies", "stores"]

source = rest_api_source(
    {
        "client": {
            "base_url": f"{url}/api/",
            "paginator": {
                "type": "offset",
                "limit": 1000,
                "offset_param": "offset",
                "limit_param": "limit",
                "total_path": "meta.total",
            },
        },
        "resource_defaults": {"endpoint": {"data_selector": "data"}, "write_disposition": "append"},
        "resources": RESOURCES,
    },
    max_table_nesting=0,
    parallelized=config == "parquet-parallel",
)
pipeline = dlt.pipeline(
    pipeline_name="shop",
    destination=dlt.destinations.duckdb(database),
    dataset_name="bench",
    pipelines_dir=os.path.join(workdir, "pipelines"),
)
file_format = None if config == "default" else "parquet"
pipeline.run(source, loader_file_format=file_format)
with pipeline.sql_client() as client:
    rows = sum(client.execute_sql(f"SELECT count(*) FROM {t}")[0][0] for t in RESOURCES)
print(json.dumps({"rows": rows}))
