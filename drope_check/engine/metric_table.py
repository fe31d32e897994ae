"""Every measured metric of a model object, defined once: name, shape, how it is made, whether it is an
attention-to-BOS number, whether (and how) the report plots it.

Read by the capture (which per-layer statistics a sequence gets, and which solver computes each:
:mod:`drope_check.engine.capture`), :func:`drope_check.measurements.measure.summarise` (the series it
averages over sequences), the validator (each field's range: :mod:`drope_check.measurements.rules`,
which fields a source may leave out: :data:`drope_check.measurements.validate.OPTIONAL_FIELDS`), the
protocol identity (:func:`drope_check.claims.protocol_identity.is_attention_metric`) and the report's
plots (:data:`drope_check.report.build.PLOT_SERIES`). docs/measurements-schema.md lists the same names
(tests/test_metric_table.py holds the two together). A new metric is one row here plus the code that
computes it (:mod:`drope_check.engine.metrics`) and its line in the schema doc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ATTENTION_METHOD_FACTS",
    "CAPTURED_SERIES",
    "METRICS",
    "MOMENT_STATS",
    "SPECTRUM_STATS",
    "Metric",
    "metric",
    "names",
]

Kind = Literal["series", "heads", "scalar"]

#: Where a metric's value comes from (``source``).
SOURCES: tuple[str, ...] = (
    "residual moments",  # one pass over a residual's rows (engine.residual_stats.residual_moments)
    "residual spectrum",  # the eigenvalues of its Gram matrix (engine.residual_stats.gram_entropies)
    "MLP write",  # a hook on the architecture's block_mlp_write (engine.capture)
    "sink scores",  # the per-sequence attention-to-BOS scores (engine.sink_stats)
    "embedding",  # the BOS row of the embedding output (engine.capture)
    "summary",  # computed from other series of the same model (measurements.measure.summarise)
    "perplexity",  # the capture pass's NLL (measurements.measure.baseline_perplexity)
    "eager-fp16 probe",  # engine.eager_probe
)

#: The validator's ranges (:mod:`drope_check.measurements.rules` maps each to its rule).
RANGES: tuple[str, ...] = (
    "norm",
    "nonneg",
    "fraction",
    "rate",
    "entropy",
    "count0",
    "layer",
    "ppl",
    "sink_score",
)


@dataclass(frozen=True)
class Metric:
    """One metric of a model object.

    Attributes:
        name: the key (``layers.<name>``, ``heads.<name>`` or ``scalars.<name>``).
        kind: ``series`` (one value per layer), ``heads`` (per layer and head) or ``scalar``.
        source: what computes it (:data:`SOURCES`).
        reduction: how the per-sequence values become the file's value.
        range: what the validator accepts (:data:`RANGES`).
        attention: an attention-to-BOS number: its protocol identity includes the attention fields
            (:data:`drope_check.claims.protocol_identity.ATTENTION_FIELDS`).
        optional: a source may leave it out (a claim reading it is then skipped, not an error).
        plot: the axis label when the report plots it per layer (None: not plotted).
        log: plotted on a log scale.
    """

    name: str
    kind: Kind
    source: str
    reduction: str
    range: str
    attention: bool = False
    optional: bool = True
    plot: str | None = None
    log: bool = False


_MEAN = "mean over sequences of the per-sequence value"
_FRACTION = "per sequence the fraction of heads whose score passes tau, then the mean over sequences"
_HEAD_MEAN = "per head, the mean over sequences of its score"
_PER_SEQUENCE = "every sequence's own scores, kept so any threshold can be recomputed"

METRICS: tuple[Metric, ...] = (
    # per-layer series, in the capture's order (SequenceCapture.layers), then the sink series
    Metric(
        "bos_norm", "series", "residual moments", _MEAN, "norm", plot="BOS residual norm ||x_0||", log=True
    ),
    Metric("bos_ratio", "series", "residual moments", _MEAN, "nonneg"),
    Metric("queipo_c", "series", "residual moments", _MEAN, "nonneg"),
    Metric("queipo_alpha", "series", "residual moments", _MEAN, "fraction"),
    Metric(
        "entropy",
        "series",
        "residual spectrum",
        _MEAN,
        "entropy",
        plot="matrix entropy H (nats, uncentred)",
        log=True,
    ),
    Metric("entropy_normalized", "series", "residual spectrum", _MEAN, "fraction"),
    Metric("anisotropy", "series", "residual spectrum", _MEAN, "fraction"),
    Metric("mean_token_norm", "series", "residual moments", _MEAN, "norm"),
    Metric("bos_mlp_write_norm", "series", "MLP write", _MEAN, "norm"),
    Metric(
        "sink_rate",
        "series",
        "sink scores",
        _FRACTION,
        "rate",
        attention=True,
        plot="sink rate (fraction of heads, score >= tau)",
    ),
    Metric(
        "sink_rate_excl_self",
        "series",
        "sink scores",
        _FRACTION + " (t = 0 left out)",
        "rate",
        attention=True,
    ),
    # a count of NaN heads, not a score: its identity is the common fields (as the suite has always judged it)
    Metric(
        "attention_nan_heads",
        "series",
        "sink scores",
        "(sequence, head) pairs with NaN attention",
        "count0",
        optional=False,
    ),
    # per layer and head
    Metric("sink_score", "heads", "sink scores", _HEAD_MEAN, "sink_score", attention=True),
    Metric(
        "sink_score_excl_self",
        "heads",
        "sink scores",
        _HEAD_MEAN + " (t = 0 left out)",
        "sink_score",
        attention=True,
    ),
    Metric("sink_score_per_sequence", "heads", "sink scores", _PER_SEQUENCE, "sink_score", attention=True),
    Metric(
        "sink_score_excl_self_per_sequence",
        "heads",
        "sink scores",
        _PER_SEQUENCE + " (t = 0 left out)",
        "sink_score",
        attention=True,
    ),
    # scalars
    Metric("embedding_bos_norm", "scalar", "embedding", _MEAN, "norm"),
    Metric(
        "sink_rate_average", "scalar", "sink scores", "mean over layers of sink_rate", "rate", attention=True
    ),
    Metric(
        "sink_rate_average_excl_self",
        "scalar",
        "sink scores",
        "mean over layers of sink_rate_excl_self",
        "rate",
        attention=True,
    ),
    Metric(
        "attention_nan_heads",
        "scalar",
        "sink scores",
        "sum over layers of attention_nan_heads",
        "count0",
        optional=False,
    ),
    Metric(
        "bos_spike_layer_argmax_ratio",
        "scalar",
        "summary",
        "argmax over layers of bos_ratio (upstream's rule)",
        "layer",
    ),
    Metric(
        "bos_spike_layer_max_write",
        "scalar",
        "summary",
        "the layer whose block writes the largest increase of bos_norm",
        "layer",
    ),
    Metric("max_bos_ratio", "scalar", "summary", "max over layers of bos_ratio", "nonneg"),
    Metric("peak_bos_norm", "scalar", "summary", "max over layers of bos_norm", "norm"),
    Metric("peak_bos_norm_layer", "scalar", "summary", "argmax over layers of bos_norm", "layer"),
    Metric("min_entropy", "scalar", "summary", "min over layers of entropy", "entropy"),
    Metric("min_entropy_layer", "scalar", "summary", "argmin over layers of entropy", "layer"),
    Metric(
        "min_entropy_normalized", "scalar", "summary", "min over layers of entropy_normalized", "fraction"
    ),
    Metric(
        "min_entropy_normalized_layer",
        "scalar",
        "summary",
        "argmin over layers of entropy_normalized",
        "layer",
    ),
    Metric("ppl_baseline", "scalar", "perplexity", "the 'lines' perplexity of the capture pass", "ppl"),
    Metric(
        "eager_fp16_nonfinite_layers",
        "scalar",
        "eager-fp16 probe",
        "layers with a non-finite output",
        "count0",
    ),
    Metric("eager_fp16_first_nonfinite_layer", "scalar", "eager-fp16 probe", "the first of them", "layer"),
    Metric(
        "eager_fp16_nonfinite_attention_heads",
        "scalar",
        "eager-fp16 probe",
        "(sequence, layer, head) triples with a non-finite attention weight",
        "count0",
    ),
)

#: Facts about the author's method (``provenance.method.<fact>``) that are about the attention-to-BOS rule:
#: judged with the attention fields like the numbers they govern.
ATTENTION_METHOD_FACTS: tuple[str, ...] = ("sink_threshold",)

_BY_KEY = {(m.kind, m.name): m for m in METRICS}
_PART = {"series": "layers", "heads": "heads", "scalar": "scalars"}
_KIND = {part: kind for kind, part in _PART.items()}


def names(kind: Kind, *, source: str | None = None, optional: bool | None = None) -> tuple[str, ...]:
    """The names of one kind, in table order (only those of ``source`` / with ``optional``, when given)."""
    return tuple(
        m.name
        for m in METRICS
        if m.kind == kind
        and (source is None or m.source == source)
        and (optional is None or m.optional == optional)
    )


def metric(part: str, name: str) -> Metric | None:
    """The metric at ``<part>.<name>`` of a model object (part ``layers``, ``heads`` or ``scalars``), or None."""
    kind = _KIND.get(part)
    return _BY_KEY.get((kind, name)) if kind is not None else None


#: Residual statistics from the moments of a residual, and those from its spectrum (the capture's two solvers).
MOMENT_STATS: tuple[str, ...] = names("series", source="residual moments")
SPECTRUM_STATS: tuple[str, ...] = names("series", source="residual spectrum")
#: Per-layer statistics a sequence gets from the capture, in its order (``SequenceCapture.layers``).
CAPTURED_SERIES: tuple[str, ...] = tuple(
    m.name
    for m in METRICS
    if m.kind == "series" and m.source in ("residual moments", "residual spectrum", "MLP write")
)
