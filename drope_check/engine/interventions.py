"""The report's two functional interventions, as context managers that record what they did.

Claims under test (report, "BOS-MLP Ablation" and "Q/K Disruption" sections): zeroing the BOS
token's MLP output at the "BOS spike layer" raises RoPE's perplexity 1249x and leaves DroPE's
unchanged; replacing massive Q/K values by their mean costs RoPE 6.7x and DroPE 1.29x.

Both interventions are implemented exactly as upstream's code defined them, next to the principled
variant, because the numbers hinge on the details:

* :func:`bos_mlp_ablation` zeroes the feed-forward branch's write into the residual at the BOS row
  (the architecture's ``block_mlp_write``: ``layers[L].mlp`` for Llama, ``layers[L].post_feedforward_layernorm``
  for Gemma 3, whose MLP output is normed before it is added). Upstream's hook zeroed
  row 0 of *every* forward call, which during cached generation is the newly generated token, not
  the BOS (confound documented below; ``every_call=True`` reproduces it). Which ``L`` is used matters
  more than anything else here: the notes' confound 4 shows DroPE's massive BOS write happens at
  layer 1 while upstream's ``argmax-ratio`` rule picks layer 2, whose BOS MLP output is ~70x smaller.
  The record therefore stores the norm of what was zeroed, so an ablation of a near-silent MLP is
  visibly near-silent.
* :func:`qk_disruption` replaces, per head, the top-k dims of q and k by their mean over the
  sequence. ``rule="report"`` is upstream's code: hooks on the raw ``q_proj`` / ``k_proj`` outputs
  (before the rotary step and before any per-head QK-norm, e.g. Gemma 3's), replacement only where the dim's L2 norm over the sequence exceeds
  ``threshold`` (5.0) x the mean of that head's dim norms. (The report's prose says ">10 std"; no
  such rule exists in the code.) ``rule="jin"`` is Jin et al. (ICML 2025): the same replacement on
  the *post-rotary* q/k the model attends with, top-1 per head, no threshold, through
  :func:`drope_check.engine.attention.transform_query_key`. For an identity-rotation (DroPE) model without
  QK-norm the two positions coincide; for a RoPE model they do not.

Statistics are per sequence over its real (unpadded) positions. Upstream ran batch size 1 and
averaged "over batch and positions", so per-sequence statistics equal upstream's there and make a
padded batch give exactly the per-sequence result (tests prove both).

The context managers live in :mod:`drope_check.engine.bos_ablation` and
:mod:`drope_check.engine.qk_disruption`; this module runs them under the ``lines`` perplexity protocol
(:func:`measure_interventions`). Every context manager yields an
:class:`~drope_check.engine.intervention_record.InterventionRecord` that counts how often each hook fired,
which rows / heads / dims it touched and with what norms; hooks and registrations are removed in
``finally``, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from drope_check.engine import metrics
from drope_check.engine.bos_ablation import bos_mlp_ablation
from drope_check.engine.intervention_record import check_layer
from drope_check.engine.qk_disruption import QK_RULES, qk_disruption

if TYPE_CHECKING:
    from drope_check.engine.perplexity import PerplexityResult

__all__ = ["INTERVENTIONS", "measure_interventions"]


#: Default intervention names understood by :func:`measure_interventions`.
INTERVENTIONS: tuple[str, ...] = (
    "bos_mlp_ablation:argmax-ratio",
    "bos_mlp_ablation:max-write",
    "qk_disruption:report",
    "qk_disruption:jin",
)


# --------------------------------------------------------------------------------------------------
# perplexity under interventions


def _parse_intervention(name: str, spike_layers: dict[str, int]) -> tuple[str, str, int | None]:
    kind, _, arg = name.partition(":")
    if kind == "bos_mlp_ablation":
        if arg in spike_layers:
            return kind, arg, spike_layers[arg]
        if arg.isdigit():
            return kind, "explicit", int(arg)
        raise ValueError(
            f"intervention {name!r}: no layer for spike rule {arg!r}; spike_layers has "
            f"{sorted(spike_layers)} (or name a layer explicitly, e.g. 'bos_mlp_ablation:1')"
        )
    if kind == "qk_disruption":
        if arg in QK_RULES:
            return kind, arg, None
        raise ValueError(f"intervention {name!r}: unknown Q/K rule {arg!r}; known rules: {sorted(QK_RULES)}")
    raise ValueError(
        f"unknown intervention {name!r}; use 'bos_mlp_ablation:<spike rule or layer>' or "
        f"'qk_disruption:<{'|'.join(QK_RULES)}>', e.g. {list(INTERVENTIONS)}"
    )


def measure_interventions(
    model: torch.nn.Module,
    seqs: list[list[int]],
    pad_token_id: int,
    spike_layers: dict[str, int],
    which: Sequence[str] = INTERVENTIONS,
    batch_size: int = 4,
    baseline: PerplexityResult | None = None,
) -> dict[str, dict[str, Any]]:
    """Perplexity (``lines`` protocol) under each named intervention, with its ratio to the baseline.

    Names: ``"bos_mlp_ablation:<rule>"`` ablates at ``spike_layers[<rule>]`` (e.g. ``argmax-ratio``,
    upstream's rule, or ``max-write``), ``"bos_mlp_ablation:<int>"`` at that layer;
    ``"qk_disruption:report"`` uses upstream's threshold 5.0 / top-1 on raw projections and
    ``"qk_disruption:jin"`` Jin's top-1 post-rotary replacement without threshold.

    Returns, per name: ``ppl``, ``baseline_ppl``, ``ratio`` = ppl / baseline_ppl, ``protocol``,
    ``kind``, ``rule``, ``spike_rule`` and ``layer`` (ablation), ``perplexity`` (the full
    :class:`~drope_check.engine.perplexity.PerplexityResult`) and ``record`` (what was touched). The
    baseline is computed here with the same protocol and batch size when not given; a given
    baseline must be a ``lines`` result on the same sequences.
    """
    from drope_check.engine.perplexity import perplexity_lines

    parsed = [(name, *_parse_intervention(name, spike_layers)) for name in which]
    for _, _, _, layer in parsed:
        if layer is not None:
            check_layer(model, layer)
    if baseline is None:
        baseline = perplexity_lines(model, seqs, pad_token_id, batch_size=batch_size)
    elif baseline.protocol != "lines" or len(baseline.per_sequence) != len(seqs):
        raise ValueError(
            f"baseline is a {baseline.protocol!r} result on {len(baseline.per_sequence)} sequences; "
            f"need a 'lines' result on the same {len(seqs)} sequences (or pass baseline=None)"
        )
    results: dict[str, dict[str, Any]] = {}
    # Two spike rules often pick the same layer (both L11 on the embedded pair): one ablation
    # pass serves both names instead of repeating the same forwards.
    ablations: dict[int, tuple[PerplexityResult, Any]] = {}
    for name, kind, rule, layer in parsed:
        if kind == "bos_mlp_ablation":
            assert layer is not None
            if layer not in ablations:
                with bos_mlp_ablation(model, layer) as record:
                    ablations[layer] = (
                        perplexity_lines(model, seqs, pad_token_id, batch_size=batch_size),
                        record,
                    )
            result, record = ablations[layer]
        else:
            context = qk_disruption(model, rule, threshold=5.0 if rule == "report" else None, top_k=1)
            with context as record:
                result = perplexity_lines(model, seqs, pad_token_id, batch_size=batch_size)
        results[name] = {
            "intervention": name,
            "kind": kind,
            "rule": record.rule,
            "spike_rule": rule if kind == "bos_mlp_ablation" else None,
            "layer": layer,
            "protocol": result.protocol,
            "ppl": result.ppl,
            "baseline_ppl": baseline.ppl,
            "ratio": metrics.perplexity_ratio(result.ppl, baseline.ppl),
            "n_sequences": len(seqs),
            "n_predicted": result.n_predicted,
            "perplexity": result.to_dict(),
            "record": record.to_dict(),
        }
    return results
