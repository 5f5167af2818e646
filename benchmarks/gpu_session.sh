#!/usr/bin/env bash
# One batched run on a lent GPU machine (the `device` tool; see docs/benchmarks.md): the CUDA-only tests and the
# GPU benchmark suites, every log and JSON written under $OUT. Stages (args pick): tests, pipeline, step, resnet,
# profile, depthwise (cp_mobile's depthwise convolutions in each layout), e2e (short real training runs with every
# GPU switch on).
#   bash benchmarks/gpu_session.sh tests pipeline
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
bench() { timeout "$1" python3 -m audio_mrkd.cli bench "${@:2}" 2>&1; }
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests pipeline step resnet)
for stage in "${stages[@]}"; do
  start=$(date +%s)
  case $stage in
    tests) timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_distill.py tests/test_precision.py \
             -k cuda -s 2>&1 | tee "$OUT/tests.log" ;;
    pipeline) bench 420 --suite pipeline --batch 256 --steps 20 --json "$OUT/pipeline.json" | tee "$OUT/pipeline.log" ;;
    step) bench 300 --suite step --batch 256 --steps 20 --ks 1 2 4 8 --json "$OUT/step.json" | tee "$OUT/step.log" ;;
    e2e) for mode in "method=ce" "method=mrkd" "method=mrkd mrkd.teacher_input=cached"; do  # the whole engine, all switches
           timeout 150 python3 -m audio_mrkd.cli train --config configs/experiments/dcase_mrkd.yaml data.kind=synthetic data.synthetic_items=4096 $mode mrkd.k=2 \
             train.epochs=4 train.batch_size=256 train.compile=true train.compile_mode=reduce-overhead \
             train.progress=false train.out_dir="$OUT/e2e" 2>&1 | grep -v "Automatic Mixed" | tail -4
         done | tee "$OUT/e2e.log" ;;
    profile) timeout 200 python3 benchmarks/profile_gpu.py 2>&1 | tee "$OUT/profile.log" ;;
    depthwise) timeout 240 python3 benchmarks/bench_depthwise.py --batch 256 --steps 20 2>&1 | tee "$OUT/depthwise.log" ;;
    resnet) bench 240 --suite resnet --batch 256 --steps 20 --json "$OUT/resnet.json" | tee "$OUT/resnet.log" ;;
  esac
  echo "## stage $stage took $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
done
