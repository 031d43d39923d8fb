#!/usr/bin/env bash
# Issue 21's GPU check, one prepared script for one H100 or H200 (under 8 minutes):
#
#   1. tests/test_gpu.py: the fused kernels against the reference kernels on the GPU, bit for bit
#      (every method, normalize on and off, TIES with ties at its threshold), DARE masks CPU = GPU,
#      the resident merge = the disk merge;
#   2. bench/gpu_merge.py: one Mistral-7B-shaped candidate (8 layers, base + 3 sources resident,
#      bf16) merged in memory, fused and reference side by side: seconds, GB/s against the HBM peak;
#   3. where vLLM is importable: bench/vllm_swap.py (the merge straight into the engine's weights,
#      with the swap's share) and bench/vllm_dfs_check.py (data-flow paths on stock vLLM equal the
#      transformers path executor). The GPU machines have no vLLM and no network: these two run
#      only where a vLLM install was carried there; the script says so when it skips them.
#
# The GPU image has torch, transformers, safetensors and pytest but not all of evohub's
# dependencies. Prepare the missing ones once as wheels on a machine with pip, in the repo root
# (.whl is git-ignored through .git/info/exclude and travels with `carry: [".whl"]`):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic pydantic_core annotated_types typing_inspection cma
#
# Then: bash bench/gpu_check.sh   (results under $OUT, or bench/out/gpu-check)
set -u
out=${OUT:-bench/out/gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$gpu" in
  *H200*) peak=4800 ;;
  *H100*) peak=3350 ;;
  *) peak=0 ;;
esac
echo "== $gpu (HBM peak ${peak} GB/s); torch $(python3 -c 'import torch; print(torch.__version__)')" | tee "$out/summary.txt"
status=0

echo "== 1. tests/test_gpu.py"
timeout 200 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$out/test_gpu.log" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 2. bench/gpu_merge.py (fused vs reference, Mistral-7B shapes, 8 layers)"
peak_arg=()
[ "$peak" -gt 0 ] && peak_arg=(--peak-gbs "$peak")
timeout 200 python3 bench/gpu_merge.py --layers 8 --runs 5 "${peak_arg[@]}" >"$out/gpu_merge.json" 2>"$out/gpu_merge.err" || status=1
python3 - "$out/gpu_merge.json" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:  # the bench failed: its stderr is beside the JSON
    print(f"gpu_merge.py gave no result ({e}); see gpu_merge.err"); raise SystemExit(0)
for m, row in r["methods"].items():
    f, ref = row["fused"], row["reference"]
    share = f"{f['share_of_peak']:.0%} of peak" if f["share_of_peak"] else "peak unknown"
    print(f"{m}: fused {f['extrapolated_7b_s']:.3f} s per 7.24B candidate ({f['GB_per_s']:.0f} GB/s, {share}), "
          f"reference {ref['extrapolated_7b_s']:.3f} s, ×{row['speedup']:.1f}, bit-identical {row['bit_identical']}")
d = r["methods"]["dare_ties"]["fused"]["extrapolated_7b_s"]
print(f"target (merge alone; the vLLM swap adds its share): ≤ 0.3 s {'met' if d <= 0.3 else 'NOT met'}, "
      f"stretch ≤ 0.1 s {'met' if d <= 0.1 else 'not met'}")
EOF

if python3 -c "import vllm" 2>/dev/null; then
  echo "== 3a. bench/vllm_swap.py"
  timeout 200 python3 bench/vllm_swap.py --layers 8 --runs 5 "${peak_arg[@]}" >"$out/vllm_swap.log" 2>&1 || status=1
  tail -1 "$out/vllm_swap.log" | tee -a "$out/summary.txt"
  echo "== 3b. bench/vllm_dfs_check.py"
  timeout 120 python3 bench/vllm_dfs_check.py >"$out/vllm_dfs.log" 2>&1 || status=1
  tail -1 "$out/vllm_dfs.log" | tee -a "$out/summary.txt"
else
  echo "vLLM is not installed here: the swap timing and the DFS-on-vLLM check are skipped" | tee -a "$out/summary.txt"
fi
exit $status
