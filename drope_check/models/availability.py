"""Whether a registered pair can be measured here, and if not exactly why (never downloads)."""

from __future__ import annotations

import torch

from drope_check.models.embedded import EmbeddedUnavailable, is_embedded
from drope_check.models.hub import hub_models, human_size, model_status, refusal
from drope_check.models.pairs import PairSpec, embedded_model, get_pair


def gpu_refusal(pair: PairSpec, device: str | None) -> str | None:
    """Why a pair that needs a GPU (``needs_gpu``: 7B models) is not measured here, or None.

    Without a device named (``--device`` / ``--drope-device``), such a pair runs only where CUDA is
    present: measuring a 7B pair on a CPU takes hours, so doing it must be the user's explicit
    choice. Naming ``cpu`` is that choice (recorded in the measurements' ``options.device``)."""
    if not pair.needs_gpu or device is not None or torch.cuda.is_available():
        return None
    return (
        f"pair {pair.name} needs a CUDA device (7B models: a >= 24 GB GPU) and none is present here; run "
        f"`pytest claims/ --pair {pair.name} --require-models` on a GPU runner, or name the CPU explicitly "
        "(pytest --drope-device cpu, drope-check --device cpu) to measure on it anyway"
    )


def pair_available(name: str, device: str | None = None) -> tuple[bool, str]:
    """Whether a registered pair can be measured here, and if not, exactly why (never downloads).

    Hub models count as available when they are in the local HF cache or can be downloaded (the
    measurement downloads them first, :func:`drope_check.models.hub_download.resolve_pair`); a gated repo without
    a token, an unknown repo or an unreachable hub (``HF_HUB_OFFLINE`` included) is the reason
    (:func:`drope_check.models.hub.model_status`). ``device``: the device the user named, if any
    (:func:`gpu_refusal`)."""
    pair = get_pair(name)
    if is_embedded(pair.rope.source):
        try:
            embedded_model(pair.rope.source).check_installed()
            import gguf  # noqa: F401
        except (EmbeddedUnavailable, ImportError) as exc:
            return False, f"embedded model unavailable: {exc}"
        return True, "embedded GGUF installed"
    statuses = [model_status(spec.source, spec.revision) for spec in hub_models(pair)]
    if any(not s.usable for s in statuses):
        return False, refusal(statuses)
    why_not = gpu_refusal(pair, device)
    if why_not is not None:
        return False, why_not
    missing = [s for s in statuses if s.state == "downloadable"]
    if missing:
        size = sum(s.size or 0 for s in missing)
        return True, (
            f"{', '.join(s.repo_id for s in missing)} not cached: downloaded before measuring "
            f"({human_size(size)})"
        )
    return True, "weights in the local HF cache"
