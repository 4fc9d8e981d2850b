"""Run configs (JSON list file) one after another; append each result as a JSON line."""
import json
import sys
import traceback

from harness import run

cfgs = json.load(open(sys.argv[1]))
out = sys.argv[2]
for c in cfgs:
    try:
        r = run(c)
    except Exception:
        r = dict(cfg=c, error=traceback.format_exc())
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")
