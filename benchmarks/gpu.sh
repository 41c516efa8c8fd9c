#!/usr/bin/env bash
# Every GPU check of the engine in one command (targets: docs/benchmarks.md), results under
# benchmarks/results/gpu-<date>/ with the device's name in each file:
#
#     bash benchmarks/gpu.sh            # ~15 min on an H100 (compiles dominate)
#     QUICK=1 bash benchmarks/gpu.sh    # smaller: no 8B compile, no HF static compile
#
# 1. the gpu-marked tests (CUDA graphs vs the reference, graph replay vs eager, sampled lanes);
# 2. kernels of one width-1 step (where the time goes vs the weight-streaming floor);
# 3. decode step at widths 1/4/16/64 for SmolLM2 / 1.1B / 8B shapes vs HF generate, greedy,
#    and with --compile (engine) and --hf-static (HF static cache + torch.compile);
# 4. the same sampled (T 0.8, top-p 0.95: the draw runs inside the graph);
# 5. the skeleton-of-thought-shaped request (engine rows/tree vs sequential vs HF).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
out="benchmarks/results/gpu-$(date +%Y%m%d-%H%M)"
mkdir -p "$out"
compile=1.1b,8b hfstatic=1.1b
if [ -n "${QUICK:-}" ]; then compile=1.1b hfstatic=; fi
status=0
python -m pytest -q -m gpu tests/engine/test_gpu.py -p no:cacheprovider 2>&1 | tee "$out/tests.txt" \
    || status=1
for s in 8b 1.1b; do
    python benchmarks/engine_profile.py --shape "$s" --width 1 2>&1 | tee "$out/profile_$s.md"
done
python benchmarks/engine_step.py --shapes smollm2,1.1b,8b --widths 1,4,16,64 --reps 2 \
    --compile "$compile" --hf-static "$hfstatic" 2>&1 | tee "$out/engine_step.md"
python benchmarks/engine_step.py --shapes smollm2,8b --widths 1,16,64 --reps 1 \
    --temperature 0.8 --top-p 0.95 2>&1 | tee "$out/engine_step_sampled.md"
python benchmarks/engine_sot.py --shape 1.1b 2>&1 | tee "$out/engine_sot.md"
echo "results in $out (tests: $([ $status = 0 ] && echo passed || echo FAILED))"
exit $status
