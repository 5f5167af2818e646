#!/usr/bin/env bash
# Issue 28 in one call on a lent GPU machine: MrKD at its paper's scale on all of Fashion-MNIST against CE and label
# smoothing (configs/ablations/fmnist_paper_scale.yaml). First every run of the study is measured at once
# (`audio-mrkd ablate-plan`, about a minute) and the schedule it chooses — the epoch count, the same for every
# variant; the model; the seeds — goes to $OUT/plan.json before any run is scored; then the study runs, every run at
# once (one process each, one GPU), and its records, tables (vs ce and vs ce_ls) and pictures land under $OUT.
#
#   bash benchmarks/gpu_study.sh prepare   # here, once, in the checkout the device tool sends: Debian's
#                                          # dataset-fashion-mnist → .data/fashion-mnist (31 MB, git-ignored)
#   device tool: run  command "bash benchmarks/gpu_study.sh"  carry [".data"]  timeout_s 600
#
# Environment: STUDY_BUDGET_S (default 560: seconds from the start until everything is under $OUT; the call's limit
# is 600), POST_S (40: kept for the tables and copies), MODELS (resnet20 resnet32 resnet56: smallest first, the
# largest that fits MAX_EPOCHS is taken), MAX_EPOCHS (200), MAX_SEEDS (3), CALIBRATE_S (15: steps timed per run),
# STEP_GRAPH (false: the whole-step CUDA graph has never run on a GPU; true to try it), DATA (.data/fashion-mnist),
# RUN_EXTRA (more `--run` overrides, e.g. for a CPU check), WORK (/tmp/audio_mrkd_study), RESUME (an earlier call's
# $OUT: its plan and records are taken up again; rerunning on the same machine resumes by itself).
set -uo pipefail
START=$(date +%s)
SPEC=${SPEC:-configs/ablations/fmnist_paper_scale.yaml}
DATA=${DATA:-.data/fashion-mnist}

if [ "${1:-}" = prepare ]; then
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 - "$DATA" <<'PY' || exit
import shutil, sys, tempfile
from pathlib import Path
from audio_mrkd.data.image_readers import fetch_fashion_mnist
target = Path(sys.argv[1])
target.mkdir(parents=True, exist_ok=True)
for idx in fetch_fashion_mnist(Path(tempfile.gettempdir()) / "audio_mrkd_fashion_mnist").glob("*-ubyte*"):
    shutil.copy2(idx, target / idx.name)
print(f"{target}: {', '.join(sorted(p.name for p in target.iterdir()))}")
PY
  exit 0
fi

source "$(dirname "$0")/gpu_env.sh"
export PYTORCH_NVML_BASED_CUDA_CHECK=1  # a CUDA check before ablate forks its runs must not initialise CUDA
WORK=${WORK:-/tmp/audio_mrkd_study}
STUDY=$WORK/study
LOG=$OUT/study.log
left() { echo $(( START + ${STUDY_BUDGET_S:-560} - ${POST_S:-40} - $(date +%s) )); }
cli() { python3 -m audio_mrkd.cli "$@"; }
by_deadline() {  # the command, cut when the time for plan and study is up (never `timeout 0`: that is no limit)
  local limit; limit=$(left)
  if [ "$limit" -le 0 ]; then echo "no time left for: $*" | tee -a "$LOG"; return 124; fi
  timeout -k 15 "$limit" "$@"
}
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  echo "no Fashion-MNIST in $DATA: run 'bash benchmarks/gpu_study.sh prepare' there and carry .data" | tee "$LOG" >&2
  exit 2
fi
RUN=(--run "data.root=$DATA" --run "train.step_graph=${STEP_GRAPH:-false}")
for override in ${RUN_EXTRA:-}; do RUN+=(--run "$override"); done
mkdir -p "$STUDY"
if [ -n "${RESUME:-}" ]; then cp -n "$RESUME/plan.json" "$WORK/plan.json"; cp -n "$RESUME/runs.jsonl" "$STUDY/"; fi

# 1. the plan, from the first minute's measurements, before any run is scored
if [ ! -f "$WORK/plan.json" ]; then
  by_deadline python3 -m audio_mrkd.cli ablate-plan "$SPEC" --budget "$(left)" "${RUN[@]}" \
    --models ${MODELS:-resnet20 resnet32 resnet56} --max-epochs "${MAX_EPOCHS:-200}" --max-seeds "${MAX_SEEDS:-3}" \
    --seconds "${CALIBRATE_S:-15}" --work "$WORK/plan" --json "$WORK/plan.json" >> "$LOG" 2>&1 \
    || { tail -5 "$LOG"; exit 1; }
fi
cp "$WORK/plan.json" "$OUT/plan.json"
grep "^plan:\|^ablate-plan:" "$LOG"
read -r MODEL EPOCHS SEEDS JOBS < <(python3 -c 'import json, sys; p = json.load(open(sys.argv[1]))
print(p["model"], p["epochs"], json.dumps(p["seeds"]).replace(" ", ""), p["jobs"])' "$WORK/plan.json")
STUDY_ARGS=("$SPEC" --out "$STUDY" "${RUN[@]}" --run "model.name=$MODEL" --run "train.epochs=$EPOCHS" "seeds=$SEEDS")
echo "study: audio-mrkd ablate ${STUDY_ARGS[*]} --jobs $JOBS" | tee -a "$LOG"

# 2. the study, every run at once; cut at the deadline so that what finished still reaches $OUT
by_deadline python3 -m audio_mrkd.cli ablate "${STUDY_ARGS[@]}" --jobs "$JOBS" >> "$LOG" 2>&1
echo "## study ended (exit $?; 124: cut at the deadline) after $(( $(date +%s) - START )) s" | tee -a "$LOG"

# 3. tables and pictures against label smoothing and against ce; records; the rest packed
REPORT=$WORK/report
mkdir -p "$REPORT"
for ref in ce_ls ce; do
  cli ablate "${STUDY_ARGS[@]}" --summary "reference=$ref" > /dev/null 2>> "$LOG"
  for f in ablation.md ablation.json ablation.png ablation_test.png; do
    [ -f "$STUDY/$f" ] && cp "$STUDY/$f" "$REPORT/${f%.*}_vs_$ref.${f##*.}"
  done
done
cp "$REPORT"/ablation_vs_ce.md "$REPORT"/ablation_vs_ce_ls.md "$OUT/" 2>/dev/null
cp "$REPORT/ablation_test_vs_ce.png" "$OUT/" 2>/dev/null
cp "$STUDY/runs.jsonl" "$OUT/" 2>/dev/null
(cd "$STUDY" && find . -name metrics.json -o -name config.yaml -o -name versions.json) > "$WORK/runfiles.txt"
tar -czf "$OUT/study.tar.gz" -C "$WORK" report plan.json -C "$STUDY" -T "$WORK/runfiles.txt"
cat "$OUT/ablation_vs_ce.md" 2>/dev/null
echo "## took $(( $(date +%s) - START )) s; under $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
