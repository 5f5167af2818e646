#!/usr/bin/env bash
# One batched call on a lent GPU machine (the `device` tool; see docs/benchmarks.md): the CUDA tests and the GPU
# benchmark suites, everything written under $OUT. Stages (args pick; default: tests pipeline step resnet profile):
#   tests     tests/test_cuda.py (every method with the GPU defaults, captured vs eager step, resume, CPU read-back)
#             and the other CUDA-only tests (test_distill's graphed teachers, test_precision's CPU vs CUDA)
#   pipeline  audio-mrkd bench --suite pipeline (the DCASE'24 way vs each GPU switch, with and without the step graph)
#   step      audio-mrkd bench --suite step (CE vs MrKD K = 1 2 4 8, same batch and cached, with and without the graph)
#   resnet    audio-mrkd bench --suite resnet;  profile  benchmarks/profile_gpu.py
#   depthwise, e2e (not in the default list) cp_mobile's depthwise layers; short real training runs, every switch on
#
# The call a GPU session makes (the `run` tool sets $OUT; 15 device-minutes in all, the machine's start included):
#   run(command="bash benchmarks/gpu_session.sh tests pipeline step resnet profile", timeout_s=570, carry=[".whl"])
# It ends after BUDGET_S seconds at most (default 510): each stage gets its own cap (tests 240 s, pipeline and step
# 135 s, resnet and profile 60 s) or what is left of the budget, so resnet and profile run on what the first three
# leave; a stage that would get under 30 s is skipped and named in session.log, and the bench suites log each row as
# it is measured (the rows with the step graph first), so a stage cut short still returns what it measured. At most
# 8 files come back from $OUT; these are 7: session.log (GPU, stage times), tests.log, tests.xml, bench.log (every
# bench and profile line), pipeline.json, step.json, resnet.json.
# Packages of pyproject.toml that the GPU image lacks travel as Python 3.12 wheels in .whl (ignored by git; how to
# fetch them: the device tool's README). By the image's package list (device KINDS.md) that is soundfile with cffi and
# pycparser, and torchinfo; lightning-fabric too if `python3 -c "import lightning_fabric"` fails there.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
mv "$OUT/gpu.txt" "$OUT/session.log"  # the GPU's name, driver and memory open the session's log
BUDGET_S=${BUDGET_S:-510}
deadline=$(( $(date +%s) + BUDGET_S ))
# limit SECONDS: the stage's cap, or what is left of the budget if that is less
limit() { local left=$(( deadline - $(date +%s) )); echo $(( left < $1 ? left : $1 )); }
bench() { timeout "$1" python3 -m audio_mrkd.cli bench "${@:2}" 2>&1 | tee -a "$OUT/bench.log"; }
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests pipeline step resnet profile)
for stage in "${stages[@]}"; do
  case $stage in tests) cap=240 ;; pipeline) cap=135 ;; step) cap=135 ;; e2e) cap=150 ;; depthwise) cap=120 ;;
    *) cap=60 ;; esac
  t=$(limit "$cap")
  if [ "$t" -lt 30 ]; then
    echo "## stage $stage skipped: $t s of the $BUDGET_S s budget left" | tee -a "$OUT/session.log"
    continue
  fi
  start=$(date +%s)
  echo "## stage $stage (limit $t s)" >> "$OUT/bench.log"
  case $stage in
    tests) timeout "$t" python3 -m pytest -q -rs -p no:cacheprovider --durations=15 --junitxml="$OUT/tests.xml" \
             tests/test_cuda.py tests/test_distill.py tests/test_precision.py -k cuda -s 2>&1 | tee "$OUT/tests.log" ;;
    pipeline) bench "$t" --suite pipeline --batch 256 --steps 20 --json "$OUT/pipeline.json" ;;
    step) bench "$t" --suite step --batch 256 --steps 20 --ks 1 2 4 8 --json "$OUT/step.json" ;;
    resnet) bench "$t" --suite resnet --batch 256 --steps 20 --json "$OUT/resnet.json" ;;
    profile) timeout "$t" python3 benchmarks/profile_gpu.py 2>&1 | tee -a "$OUT/bench.log" ;;
    depthwise) timeout "$t" python3 benchmarks/bench_depthwise.py --batch 256 --steps 20 2>&1 \
                 | tee -a "$OUT/bench.log" ;;
    e2e) for mode in "method=ce" "method=mrkd" "method=mrkd mrkd.teacher_input=cached"; do  # the whole engine
           timeout "$(limit 150)" python3 -m audio_mrkd.cli train --config configs/experiments/dcase_mrkd.yaml \
             data.kind=synthetic data.synthetic_items=4096 $mode mrkd.k=2 train.epochs=4 train.batch_size=256 \
             train.compile=true train.compile_mode=reduce-overhead train.progress=false \
             train.out_dir=/tmp/audio_mrkd_e2e 2>&1 | grep -v "Automatic Mixed" | tail -4
         done | tee -a "$OUT/bench.log" ;;
    *) echo "unknown stage $stage" | tee -a "$OUT/session.log" ;;
  esac
  echo "## stage $stage took $(( $(date +%s) - start )) s" | tee -a "$OUT/session.log"
done
