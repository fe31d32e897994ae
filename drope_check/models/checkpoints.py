"""What a checkpoint's weights files hold, and refusals of weights that do not match the model or are not finite."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drope_check.errors import count_and_names
from drope_check.models.pairs import ModelLoadError


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def qk_norm_tensor_names(n_layers: int) -> list[str]:
    """The QK-norm weights a DroPE QK-norm checkpoint carries: both norms, every layer."""
    return [
        f"model.layers.{i}.self_attn.{norm}.weight" for i in range(n_layers) for norm in ("q_norm", "k_norm")
    ]


def _canonical_key(key: str) -> str:
    return key if key.startswith(("model.", "lm_head.")) else f"model.{key}"


def safetensors_files(folder: Path) -> list[Path]:
    """The folder's ``*.safetensors`` files; refuses a folder without any (weights are never unpickled)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"{folder}: no .safetensors files (drope_check never unpickles .bin weights); convert the weights with "
            "`model.save_pretrained(folder, safe_serialization=True)`"
        )
    return files


def checkpoint_tensor_names(folder: Path) -> set[str]:
    """Names of the tensors in a folder's safetensors files (headers only, no weights read),
    with the ``model.`` prefix of a causal LM."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in safetensors_files(folder):
        try:
            with safe_open(str(file), framework="pt") as fh:
                names.update(_canonical_key(k) for k in fh.keys())
        except Exception as exc:  # a truncated or foreign file
            raise ModelLoadError(
                f"{file} is not a readable safetensors file ({exc}); copy the checkpoint again"
            ) from exc
    return names


def require_qk_norm_tensors(folder: Path, n_layers: int, attention_type: str, name: str) -> list[str]:
    """The QK-norm tensor names of a QK-norm checkpoint (none for ``nope``); refuses a checkpoint
    that lacks any of them, naming the missing tensors (a missing norm would silently load as ones)."""
    if attention_type == "nope":
        return []
    wanted = qk_norm_tensor_names(n_layers)
    present = checkpoint_tensor_names(folder)
    missing = [t for t in wanted if t not in present]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ModelLoadError(
            f"{name}: attention_type={attention_type} but {len(missing)} of the {len(wanted)} QK-norm weights are "
            f"missing from {folder} ({shown}); a DroPE QK-norm checkpoint carries q_norm and k_norm for every layer"
        )
    return wanted


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes in its own dtype (row-major, native byte order)."""
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def checkpoint_tensor_digests(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of the named tensors as stored in the folder's safetensors files."""
    from safetensors import safe_open

    wanted = set(names)
    digests: dict[str, str] = {}
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                if _canonical_key(key) in wanted:
                    digests[_canonical_key(key)] = tensor_sha256(fh.get_tensor(key))
    return dict(sorted(digests.items()))


#: The command-line option (and, after the slash, the pytest option) that loads a checkpoint whose
#: tensors do not match the model anyway; what did not match is recorded in provenance.
ALLOW_INCOMPLETE_OPTION = "--allow-incomplete-weights (pytest: --drope-allow-incomplete-weights)"
#: How many tensor names a refusal shows per kind (the count is always given).
SHOWN_TENSORS = 4


def refuse_incomplete_load(
    info: dict[str, Any], name: str, where: str, *, allow: bool = False, hint: str | None = None
) -> dict[str, list[str]] | None:
    """A model must hold exactly the tensors its weights file holds: a missing weight would keep its
    random initialisation, an unexpected one (e.g. q/k/v biases a Llama lacks) would be dropped
    silently, a mis-shaped one re-initialised. ``info`` is transformers' loading info
    (``output_loading_info=True``: ``missing_keys``, ``unexpected_keys``, ``mismatched_keys``; tied
    weights such as SmolLM2's ``lm_head`` and buffers such as ``rotary_emb.inv_freq`` are never in it).

    Raises :class:`ModelLoadError` naming the model, ``where`` (the file or folder) and the tensors
    (the first :data:`SHOWN_TENSORS` of each kind and their count). With ``allow`` (the user's
    :data:`ALLOW_INCOMPLETE_OPTION`) returns ``{"missing": [...], "unexpected": [...], "mis_shaped":
    [...]}`` for provenance instead; None when every tensor matched."""
    found = {
        "missing": sorted(info.get("missing_keys") or ()),
        "unexpected": sorted(info.get("unexpected_keys") or ()),
        "mis_shaped": sorted(k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()),
    }
    found = {kind: keys for kind, keys in found.items() if keys}
    if not found:
        return None
    if allow:
        return found
    problems = count_and_names(found, SHOWN_TENSORS)
    raise ModelLoadError(
        f"{name}: the tensors in {where} do not match the model ({problems}), so it would not be measured as saved (a "
        f"missing tensor keeps its random initialisation, an unexpected one is ignored, a mis-shaped one re-initialised); "
        f"{hint or 'use the complete checkpoint'}, or pass "
        f"{ALLOW_INCOMPLETE_OPTION} to measure it anyway (recorded in the provenance)"
    )


@contextlib.contextmanager
def own_load_report() -> Iterator[None]:
    """Silence transformers' table of missing / unexpected / mis-shaped keys (a logged warning)
    while drope_check loads: :func:`refuse_incomplete_load` refuses those in one sentence, or
    records them under ``--allow-incomplete-weights``."""
    import logging

    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def refuse_non_finite_weights(model: nn.Module, name: str, where: str) -> None:
    """Refuse a model any of whose floating-point parameters or buffers holds a NaN or an infinity,
    naming the first such tensor: every activation downstream of it would be non-finite, and the
    capture would stop at the first layer with an error that names the symptom, not the cause.
    One ``isfinite`` pass per tensor (quantized, integer and meta tensors are skipped)."""
    import itertools

    for tensor_name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - int(finite.sum()))
            raise ModelLoadError(
                f"{name}: tensor {tensor_name} from {where} holds {bad} non-finite value(s) (NaN or inf) of "
                f"{tensor.numel()}, so every measurement would be NaN; the checkpoint is corrupt (or was saved after a "
                "diverged training step): use an intact copy"
            )
