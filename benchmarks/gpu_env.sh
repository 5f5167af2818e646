# Sourced by the GPU scripts (gpu_session.sh, gpu_study.sh) from the repository root: $OUT, packages carried as
# wheels (.whl: the GPU image has no network), PYTHONPATH, and the GPU's name, driver and memory in $OUT/gpu.txt.
OUT=${OUT:-/tmp/audio_mrkd_gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then  # packages the GPU image lacks, carried as wheels (no network there)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
else
  echo "no nvidia-smi: no GPU here" | tee "$OUT/gpu.txt"
fi
