#!/usr/bin/env bash
# One-shot check of the CUDA path on a GPU machine (issue 5): the CUDA tests, the real-scale
# ViT-B-16 path and torch.compile on the GPU, then `dfa bench --only gpu` (encoder images/s,
# training it/s, bf16 peak fraction, Sinkhorn vs POT on the GPU).
#
#   OUT=/some/folder bash experiments/probes/gpu_check.sh
#
# Uses the machine's own python3/torch. Missing packages can come as wheels in .whl/ (a
# pydensecrf2 sdist there is built in place); nothing is downloaded. Logs and the bench report
# land in $OUT (default /tmp/gpu-check). .whl/ is git-ignored; for a Python 3.12 machine it was
# filled with (add --platform manylinux_2_17_x86_64 etc. as needed):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 POT==0.9.7.post1
#   pip download --no-deps --no-binary=:all: -d .whl pydensecrf2==1.1
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
if ls .whl/pydensecrf2-*.tar.gz >/dev/null 2>&1 && ! python3 -c "import pydensecrf" 2>/dev/null; then
  timeout 180 python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \
    .whl/pydensecrf2-*.tar.gz >"$OUT/pydensecrf-build.txt" 2>&1 || echo "pydensecrf2 did not build (CRF tests will fail)"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"

timeout ${PYTEST_TIMEOUT:-330} python3 -m pytest -q -rs -p no:cacheprovider \
  tests/test_cuda.py tests/test_ot.py tests/test_refine.py \
  "tests/test_pipeline.py::test_vit_b16_voc_code_path" "tests/test_pipeline.py::test_train_with_torch_compile" \
  2>&1 | tee "$OUT/pytest.txt"

timeout ${BENCH_TIMEOUT:-200} python3 -m dfa bench --only gpu -S tracking.enabled=false --out "$OUT/bench_gpu.json" \
  2>&1 | tee "$OUT/bench.txt"
