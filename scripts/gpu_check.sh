#!/usr/bin/env bash
# The GPU checks (issue 15, goal 5) in one run on a CUDA machine: the CUDA tests, then `dist-al bench core
# --device cuda` at the goals' sizes (BADGE at N=10M, D=512; BAIT at N=1M, K=10, D=128, B=1000). Needs torch
# with CUDA, numpy, pyarrow, fsspec, pyyaml and pydantic, not Ray. Writes its logs to $OUT (default gpu-results/).
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
status=0
step() {  # step SECONDS LOG COMMAND...: one check, its log kept, a failure or timeout noted without stopping the rest
    local limit=$1 log=$2
    shift 2
    echo "== $* (limit ${limit} s)" | tee "$out/$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$log" || { echo "== exit ${PIPESTATUS[0]}: $*" | tee -a "$out/$log"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
step "${GPU_TEST_LIMIT:-120}" test_cuda.log "$py" -m pytest --noconftest -p no:cacheprovider -q -rA tests/test_cuda.py
# why BADGE's dots go through dist_al.core.kernels on a GPU: torch.mv's dots of gathered rows against the full pass's
step 60 dots.log "$py" -c "import torch
from dist_al.core.kernels import row_dots
g = torch.Generator(device='cuda').manual_seed(0)
for d in (10, 128, 512):
    h = torch.randn(10_000_000, d, device='cuda', generator=g); v = torch.randn(d, device='cuda', generator=g)
    full_mv, full_ours = torch.mv(h, v), row_dots(h, v)
    for size in (1_000, 30_000, 1_000_000):
        rows = torch.randperm(len(h), device='cuda', generator=g)[:size]
        mv = int((torch.mv(h[rows], v) != full_mv[rows]).sum()); ours = int((row_dots(h[rows], v) != full_ours[rows]).sum())
        print(f'D={d} gathered {size:,} rows: torch.mv differs from its full pass in {mv:,}, row_dots in {ours:,}')
    del h"
step "${GPU_BADGE_LIMIT:-150}" bench_badge.md "$py" -m dist_al.bench core --device cuda --scale 10 --dim 512 \
    --only badge-bound,badge-dots
# with BAIT's INFO log: where each selection's time went (initial scoring, steps, rescores)
step "${GPU_BAIT_LIMIT:-240}" bench_bait.md "$py" -c "import logging, sys; logging.basicConfig(level=logging.INFO)
from dist_al.bench.core import main; sys.exit(main(sys.argv[1:]))" --device cuda --scale 10 --only bait-gpu
exit $status
