"""Build the measurements of a pair under a protocol (the JSON of docs/measurements-schema.md).

One forward pass per batch gives every phase metric AND the baseline perplexity: the capture
(:mod:`drope_check.engine.capture`) fills per-sequence summaries while the same pass's output gives the
NLL (:func:`drope_check.engine.perplexity.model_nll`). Interventions (BOS-MLP ablation, Q/K disruption) need
forwards of their own and run afterwards, each at the layer chosen from this model's own
measurements. The two models of a pair are loaded one at a time, so a 7B pair fits a 24 GB card.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from drope_check import __version__, preflight
from drope_check.engine import metrics, sink_stats, workers
from drope_check.engine.batching import chunk_with_bos, make_batches, tokenize_with_bos
from drope_check.engine.capture import OnePassCapture, SequenceCapture
from drope_check.engine.eager_probe import EAGER_FP16, eager_fp16_probe
from drope_check.engine.interventions import INTERVENTIONS
from drope_check.engine.metric_table import CAPTURED_SERIES
from drope_check.engine.protocol import FAITHFUL, Protocol
from drope_check.models.device import environment_info
from drope_check.models.hub_download import resolve_pair
from drope_check.models.loading import LoadedModel, load_model
from drope_check.models.pairs import PairSpec, get_pair

SCHEMA_VERSION = 1

#: Every intervention `--interventions all` runs, named as in the measurements JSON (one list:
#: :data:`drope_check.engine.interventions.INTERVENTIONS`), and the eager-fp16 probe
#: (:mod:`drope_check.engine.eager_probe`: another arithmetic, not a perplexity; it writes scalars).
ALL_INTERVENTIONS: tuple[str, ...] = (*INTERVENTIONS, EAGER_FP16)


@dataclass(frozen=True)
class MeasureOptions:
    """How to obtain models and texts (not part of the protocol: they don't change a definition)."""

    wikitext: str | None = None
    device: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    trust_remote_code: bool = False
    allow_text_fallback: bool = True
    progress: bool = False
    #: load a checkpoint whose tensors do not match the model (recorded per model as
    #: ``provenance.incomplete_weights``; :func:`drope_check.models.loading.load_model`)
    allow_incomplete_weights: bool = False
    #: accelerate's device map for models larger than one device (``auto``, ...; :data:`drope_check.models.quantization.DEVICE_MAPS`),
    #: and the folder for layers it offloads to disk.
    device_map: str | None = None
    offload_folder: str | None = None


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype a ``--dtype`` name names (None: the model's own); raises ValueError for any other name."""
    if name is None:
        return None
    try:
        value = getattr(torch, name)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16, float16 or float64")
    return value


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch")


def run_capture(
    loaded: LoadedModel,
    seqs: list[list[int]],
    protocol: Protocol,
    progress: bool = False,
    label: str | None = None,
) -> tuple[list[SequenceCapture], list[tuple[float, int]], str]:
    """One capture forward per batch: per-sequence summaries, per-sequence (NLL sum, predicted),
    and a note of the precision the attention statistics were computed in."""
    from drope_check.engine.perplexity import input_device, model_nll

    capture = OnePassCapture(loaded.model, protocol, loaded.name)
    captures: list[SequenceCapture | None] = [None] * len(seqs)
    nll: list[tuple[float, int] | None] = [None] * len(seqs)
    batches = make_batches(seqs, protocol.batch_size, loaded.pad_token_id, pad_to=protocol.pad_to)
    device = input_device(loaded.model)
    with torch.inference_mode():
        for batch in _progress(batches, progress, label or f"measure {loaded.spec.role}"):
            rows = [batch.padded_length] * len(batch.lengths) if protocol.padding_in_stats else batch.lengths
            input_ids = batch.input_ids.to(device)
            mask = batch.attention_mask.to(device)
            with capture.batch(rows) as caps:
                sums, counts = model_nll(loaded.model, input_ids, mask)
            for row, index in enumerate(batch.indices):
                captures[index] = caps[row]
                nll[index] = (float(sums[row]), int(counts[row]))
    n_calls = len(batches) * capture.n_layers
    precision = (
        f"{protocol.stats_dtype}: {capture.layers_in_float64} of {n_calls} layer passes in float64, "
        f"{capture.layers_from_kernel} from the SDPA kernel's float32 log-sum-exp, the rest float32"
    )
    return captures, nll, precision  # type: ignore[return-value]


def summarise(captures: Sequence[SequenceCapture], protocol: Protocol) -> dict[str, Any]:
    """Per-layer arrays, per-head sink scores and scalars, averaged over sequences.

    Each sequence is measured on its own rows, then values are averaged over sequences. The sink
    rate of a layer is the mean over sequences of the fraction of heads whose per-sequence score
    passes tau (upstream's per-layer rates, multiples of 1/320 over 10 prompts, are per-prompt
    averages); the sink numbers come from :func:`drope_check.engine.sink_stats.sink_statistics`, which also keeps the per-sequence scores.
    """
    if not captures:
        raise ValueError("no sequences were captured")
    layers: dict[str, list[float]] = {
        stat: metrics.mean_over_sequences([c.layers[stat] for c in captures]).tolist()
        for stat in CAPTURED_SERIES
    }
    attn = [c.attn_to_bos for c in captures]
    sinks = sink_stats.sink_statistics(
        sink_stats.per_sequence_scores(attn, include_self=True),
        sink_stats.per_sequence_scores(attn, include_self=False),
        protocol,
    )
    layers.update(sinks["layers"])
    heads: dict[str, Any] = sinks["heads"]

    embedding_bos_norm = float(metrics.mean_over_sequences([c.embedding_bos_norm for c in captures]))
    peak_layer = metrics.argmax_layer(layers["bos_norm"])
    valley = metrics.argmin_layer(layers["entropy"])
    valley_norm = metrics.argmin_layer(layers["entropy_normalized"])
    scalars = {
        "embedding_bos_norm": embedding_bos_norm,
        **sinks["scalars"],
        "bos_spike_layer_argmax_ratio": metrics.spike_layer_argmax_ratio(layers["bos_ratio"]),
        "bos_spike_layer_max_write": metrics.spike_layer_max_write(embedding_bos_norm, layers["bos_norm"]),
        "max_bos_ratio": max(layers["bos_ratio"]),
        "peak_bos_norm": layers["bos_norm"][peak_layer],
        "peak_bos_norm_layer": peak_layer,
        "min_entropy": layers["entropy"][valley],
        "min_entropy_layer": valley,
        "min_entropy_normalized": layers["entropy_normalized"][valley_norm],
        "min_entropy_normalized_layer": valley_norm,
    }
    return {"layers": layers, "heads": heads, "scalars": scalars}


def baseline_perplexity(nll: Sequence[tuple[float, int]]):
    """The ``lines``-protocol baseline (:class:`~drope_check.engine.perplexity.PerplexityResult`) from the
    per-sequence (NLL sum, predicted tokens) of the capture pass: no second forward."""
    from drope_check.engine.perplexity import PerplexityResult

    nll_sum = sum(s for s, _ in nll)
    n_predicted = sum(n for _, n in nll)
    return PerplexityResult(
        protocol="lines",
        ppl=float(torch.exp(torch.tensor(nll_sum / n_predicted, dtype=torch.float64))),
        nll_sum=nll_sum,
        n_predicted=n_predicted,
        per_sequence=list(nll),
    )


class PositionsBeyondTraining(UserWarning):
    """A RoPE model measured on sequences longer than its ``max_position_embeddings``."""


def positions_beyond_training(loaded: LoadedModel, seqs: Sequence[Sequence[int]]) -> dict[str, Any] | None:
    """The record ``provenance.positions_beyond_training`` = ``{"longest_sequence",
    "max_position_embeddings"}`` when a sequence is longer than the model was trained on, else None.

    For a model without rotary (DroPE, or the identity rotation of a zero-shot NoPE side) that is
    the experiment DroPE is about; a RoPE model, though, then rotates by angles it never saw, and
    its numbers say as much about that as about the model: it is warned about (once per model, a
    :class:`PositionsBeyondTraining` warning) as well as recorded."""
    limit = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    longest = max((len(s) for s in seqs), default=0)
    if not isinstance(limit, int) or longest <= limit:
        return None
    if loaded.spec.variant == "rope":
        warnings.warn(
            f"{loaded.name}: sequences of up to {longest} tokens (--max-tokens) exceed its max_position_embeddings "
            f"{limit}: a RoPE model is measured at rotary positions it was never trained on (recorded in the "
            "provenance as positions_beyond_training)",
            PositionsBeyondTraining,
            stacklevel=2,
        )
    return {"longest_sequence": longest, "max_position_embeddings": limit}


def measure_model(
    loaded: LoadedModel,
    seqs: list[list[int]],
    protocol: Protocol = FAITHFUL,
    interventions: Sequence[str] = (),
    progress: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """The measurements of one loaded model (the ``<model>`` object of the schema); ``label`` names
    the progress bar (default ``measure <role>``). In an xdist worker the forwards share the cores
    with the other workers measuring at the same time (:func:`drope_check.engine.workers.measuring`)."""
    with workers.measuring(loaded.model):
        return _measure_model(loaded, seqs, protocol, interventions, progress, label)


def _measure_model(
    loaded: LoadedModel,
    seqs: list[list[int]],
    protocol: Protocol,
    interventions: Sequence[str],
    progress: bool,
    label: str | None,
) -> dict[str, Any]:
    start = time.perf_counter()
    beyond = positions_beyond_training(loaded, seqs)
    captures, nll, precision = run_capture(loaded, seqs, protocol, progress, label)
    summary = summarise(captures, protocol)
    baseline = baseline_perplexity(nll)
    summary["scalars"]["ppl_baseline"] = baseline.ppl
    result: dict[str, Any] = {
        "role": loaded.spec.role,
        "variant": loaded.spec.variant,
        "n_layers": len(summary["layers"]["bos_norm"]),
        "n_heads": len(summary["heads"]["sink_score"][0]),
        **summary,
        "perplexity": {"lines": baseline.to_dict()},
    }
    if EAGER_FP16 in interventions:
        summary["scalars"].update(
            eager_fp16_probe(loaded.model, seqs, loaded.pad_token_id, protocol.batch_size)
        )
        interventions = tuple(n for n in interventions if n != EAGER_FP16)
    if interventions:
        from drope_check.engine.interventions import measure_interventions

        spike_layers = {
            "argmax-ratio": summary["scalars"]["bos_spike_layer_argmax_ratio"],
            "max-write": summary["scalars"]["bos_spike_layer_max_write"],
        }
        result["interventions"] = measure_interventions(
            loaded.model,
            seqs,
            loaded.pad_token_id,
            spike_layers,
            which=tuple(interventions),
            batch_size=protocol.batch_size,
            baseline=baseline,
        )
    result["provenance"] = {
        **loaded.provenance,
        "attention_stats_precision": precision,
        "n_sequences": len(seqs),
        "n_tokens": sum(len(s) for s in seqs),
        "pad_to": protocol.pad_to or 0,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if beyond is not None:
        result["provenance"]["positions_beyond_training"] = beyond
    return result


def resolve_interventions(interventions: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"all"`` -> every intervention; ``None``/``"none"``/``""`` -> none; else validated names."""
    if interventions is None or interventions in ("", "none"):
        return ()
    if interventions == "all":
        return ALL_INTERVENTIONS
    names = tuple(interventions.split(",")) if isinstance(interventions, str) else tuple(interventions)
    unknown = [n for n in names if n not in ALL_INTERVENTIONS]
    if unknown:
        raise ValueError(
            f"unknown intervention(s) {unknown}; choose from {', '.join(ALL_INTERVENTIONS)} or 'all'"
        )
    return names


def load_texts(protocol: Protocol, options: MeasureOptions):
    """The protocol's text set (a :class:`drope_check.engine.text_set.TextSet`)."""
    from drope_check.engine import texts

    if protocol.text_set == "concatenated":
        return texts.wikitext_split_text(options.wikitext)
    return texts.wikitext_lines(
        n=protocol.n_texts,
        min_chars=protocol.min_chars,
        path=options.wikitext,
        allow_fallback=options.allow_text_fallback,
    )


#: Characters of the joined split tokenized for the concatenated text set, per token needed
#: (WikiText-2 averages ~4.3 characters per Llama/SmolLM token; 8 leaves a wide margin).
CHARS_PER_TOKEN_MARGIN = 8


def token_sequences(text_set, tokenizer: Any, bos_token_id: int, protocol: Protocol) -> list[list[int]]:
    """Token sequences of the protocol: one per line, or consecutive chunks of the joined split."""
    if protocol.text_set == "concatenated":
        needed = protocol.n_texts * protocol.max_tokens
        prefix = text_set.texts[0][: needed * CHARS_PER_TOKEN_MARGIN]
        ids = tokenizer.encode(prefix, add_special_tokens=False)
        return chunk_with_bos(ids, bos_token_id, protocol.max_tokens, protocol.n_texts)
    seqs = tokenize_with_bos(tokenizer, list(text_set.texts), bos_token_id, protocol.max_tokens)
    return cut_to_prompt_tokens(seqs, protocol.prompt_tokens)


def cut_to_prompt_tokens(seqs: list[list[int]], prompt_tokens: tuple[int, int] | None) -> list[list[int]]:
    """``Protocol.prompt_tokens``: sequence ``i`` keeps BOS + ``lo + i % (hi - lo + 1)`` tokens
    (upstream's 6-12-token sink prompts); shorter sequences stay whole. ``None``: unchanged."""
    if prompt_tokens is None:
        return seqs
    lo, hi = prompt_tokens
    return [s[: 1 + lo + i % (hi - lo + 1)] for i, s in enumerate(seqs)]


def measure_pair(
    pair: str | PairSpec,
    protocol: Protocol | None = None,
    interventions: str | Sequence[str] | Mapping[str, Sequence[str]] | None = "all",
    options: MeasureOptions | None = None,
) -> dict[str, Any]:
    """Measure both models of a pair, one at a time, and return the measurements JSON object.

    ``interventions``: ``"all"``, names for both models, or ``{role: names}`` (a role left out gets
    none): the claims run asks only for what its evaluated claims read, so a zero-shot pair's DroPE
    side, whose intervention claims are all n/a, costs no intervention passes."""
    spec = get_pair(pair) if isinstance(pair, str) else pair
    protocol = protocol or FAITHFUL
    options = options or MeasureOptions()
    if isinstance(interventions, Mapping):
        unknown_roles = sorted(set(interventions) - {m.role for m in spec.models()})
        if unknown_roles:
            raise ValueError(f"interventions for unknown role(s) {unknown_roles} of pair {spec.name}")
        per_role = {
            m.role: resolve_interventions(tuple(interventions.get(m.role, ()))) for m in spec.models()
        }
    else:
        which = resolve_interventions(interventions)
        per_role = {m.role: which for m in spec.models()}
    # Every input that can be checked without weights is checked before the first model loads: a
    # bad DroPE source must not cost a RoPE measurement first.
    preflight.check_text_source(options.wikitext)
    preflight.check_device(options.device, options.dtype, options.quantization)
    preflight.check_needs_gpu(spec, options.device)
    # Hub models as their local snapshots: a gated, unknown or unreachable repo is refused before any
    # download; a missing snapshot is downloaded (every model's status is known first).
    spec = resolve_pair(spec, progress=options.progress, trust_remote_code=options.trust_remote_code)
    preflight.check_pair(
        spec,
        device=options.device,
        dtype=options.dtype,
        quantization=options.quantization,
        trust_remote_code=options.trust_remote_code,
        device_map=options.device_map,
        offload_folder=options.offload_folder,
    )
    texts = load_texts(protocol, options)
    models: dict[str, Any] = {}
    token_info: dict[str, Any] = {}
    for model_spec in spec.models():
        loaded = load_model(
            model_spec,
            bos_token=spec.bos_token,
            dtype=torch_dtype(options.dtype),
            device=options.device,
            trust_remote_code=options.trust_remote_code,
            quantization=options.quantization,
            allow_incomplete_weights=options.allow_incomplete_weights,
            device_map=options.device_map,
            offload_folder=options.offload_folder,
        )
        seqs = token_sequences(texts, loaded.tokenizer, loaded.bos_token_id, protocol)
        token_info[model_spec.role] = sum(len(s) for s in seqs)
        models[model_spec.role] = measure_model(
            loaded, seqs, protocol, per_role[model_spec.role], options.progress
        )
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return measurements_document(spec, protocol, options, texts, token_info, models)


def measurements_document(
    spec: PairSpec,
    protocol: Protocol,
    options: MeasureOptions,
    texts: Any,
    token_info: dict[str, Any],
    models: dict[str, Any],
) -> dict[str, Any]:
    """The measurements JSON object around the model objects of one run (schema header, texts, environment)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "drope_check", "version": __version__},
        "pair": spec.name,
        "pair_description": spec.description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": protocol.to_dict(),
        "options": dataclasses.asdict(options),
        "texts": {**texts.to_provenance(), "n_tokens": token_info},
        "environment": environment_info(),
        "models": models,
    }
