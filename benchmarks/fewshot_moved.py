"""Add the measured `moved` (fewshot.moved) of each fine-tuning job to a finished benchmark's JSON lines, read
from its run folders (a run made with `fewshot.py --keep-runs`; newer runs measure it themselves),
and write the table again with the benchmark's own summarize().

    python benchmarks/fewshot_moved.py RESULTS.jsonl RUN_TMP_DIR RESULTS.md
"""
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from fewshot import moved, rewrite_table
jsonl, tmp, md = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rows = [json.loads(l) for l in jsonl.read_text().splitlines()]
for r in rows:
    tag = f"{r['kind']}_{r.get('variant', '')}_{r['dataset']}_{r['shots']}_{r['seed']}"
    if r["kind"] == "ft":
        r["moved"] = moved(tmp / tag / "full", r["backbone"])
    elif r["kind"] == "l2sp":
        r["moved"] = moved(tmp / tag / "l2sp", r["backbone"])
jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(rewrite_table(jsonl, md, ["default"]))
