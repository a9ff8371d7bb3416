"""A record hook plugin: append every finished record to a JSON-lines file named by $TLBENCH_RECORD_LOG (stand-in
for a call to an experiment tracker such as MLflow or Weights & Biases)."""
import json
import os

from tlbench import hookimpl


@hookimpl
def record_finished(record):
    path = os.environ.get("TLBENCH_RECORD_LOG")
    if not path:
        return
    summary = {"key": record["key"], "status": record["status"], "strategy": record["trial"]["strategy"],
               "seed": record["trial"]["seed"], "test_top1": record["metrics"].get("test_top1")}
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(summary) + "\n")
