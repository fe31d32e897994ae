"""Every choice the measurement engine makes, in one frozen record.

The report's confounds (claims-and-provenance.md, "Confounds") are all choices of this kind:
attention from raw projections instead of the model's own q/k, right-padding with pad rows kept in
the statistics, fp16 eager attention, which spike-layer rule, whether t = 0 counts in a sink
score, which tau. Keeping them as fields of one :class:`Protocol` lets the confound audit
re-measure under upstream's choices with the same engine instead of a copy of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

AttentionSource = Literal["model", "projections"]
StatsDtype = Literal["float64", "float32", "auto", "fp16-eager"]
TextSetName = Literal["lines", "concatenated"]
SPIKE_RULES: tuple[str, ...] = ("argmax-ratio", "max-write")


@dataclass(frozen=True)
class Protocol:
    """How one measurement run is done. The default is the faithful protocol.

    Fields
    ------
    text_set, n_texts, min_chars, max_tokens:
        ``"lines"`` (upstream's WikiText-2 selection): rows longer than ``min_chars`` characters,
        the first ``n_texts``, each its own sequence with BOS prepended, truncated to
        ``max_tokens`` in total. ``"concatenated"`` (long context, where lines are too short): the
        split's rows joined with blank lines, cut into ``n_texts`` consecutive sequences of BOS +
        ``max_tokens - 1`` tokens.
    batch_size:
        sequences per forward pass (right-padded; padding never changes a statistic of real tokens).
    pad_to, padding_in_stats:
        upstream's RoPE confound: right-pad every sequence to ``pad_to`` tokens and, with
        ``padding_in_stats``, keep the pad rows in entropy / BOS ratio / sink scores.
    attention_source:
        ``"model"``: attention-to-BOS from the exact post-rotary (and post-QK-norm) q/k the model
        attends with. ``"projections"``: upstream's "manual Q/K" method, raw ``q_proj``/``k_proj``
        outputs without the rotary step (true attention only for identity-rotation models).
    stats_dtype:
        dtype of the attention-to-BOS computation. ``"auto"`` uses float32 where a rounding bound
        shows it is accurate to 1e-6 and float64 elsewhere. ``"fp16-eager"`` is upstream's confound,
        not a precision choice: eager attention's arithmetic in float16 (q.k^T in fp16, then the
        scaling, then the softmax), where an overflow gives NaN heads; those count as non-sinks (as
        upstream's did) and their number is reported (:mod:`drope_check.engine.fp16_eager`).
    sink_tau, sink_strict:
        a head is a sink when its score is >= tau (upstream), or > tau with ``sink_strict`` (Gu et al.).
    sink_self_term:
        whether query t = 0 (which can only attend to BOS, weight 1) counts in the sink score and
        rate (upstream: yes; it adds ~1/T to every score). ``heads.sink_score_excl_self`` and
        ``layers.sink_rate_excl_self`` are always the excluded ones.
    spike_rule:
        which BOS spike layer the spike-layer and BOS-MLP-ablation claims read: ``"argmax-ratio"``
        (upstream) or ``"max-write"``. Both are always measured; this only picks one.
    prompt_tokens:
        ``(lo, hi)``: cut sequence ``i`` to ``lo + i % (hi - lo + 1)`` tokens after BOS (upstream's
        6-12-token sink prompts), or ``None`` to keep the text set's lengths.

    ``sink_tau``, ``sink_strict``, ``sink_self_term`` and ``spike_rule`` are
    :data:`STATISTICS_FIELDS`: they change no forward pass, so a measurement under one value holds
    what is needed to recompute the others (``drope_check.engine.sink_stats``).
    """

    name: str = "faithful"
    text_set: TextSetName = "lines"
    n_texts: int = 20
    min_chars: int = 100
    max_tokens: int = 512
    batch_size: int = 4
    pad_to: int | None = None
    padding_in_stats: bool = False
    attention_source: AttentionSource = "model"
    stats_dtype: StatsDtype = "auto"
    sink_tau: float = 0.3
    sink_strict: bool = False
    sink_self_term: bool = True
    spike_rule: str = "argmax-ratio"
    prompt_tokens: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.n_texts < 1:
            raise ValueError(f"Protocol.n_texts must be >= 1, got {self.n_texts}")
        if self.max_tokens < 2:
            raise ValueError(
                f"Protocol.max_tokens must be >= 2 (a perplexity needs 2 tokens), got {self.max_tokens}"
            )
        if self.batch_size < 1:
            raise ValueError(f"Protocol.batch_size must be >= 1, got {self.batch_size}")
        if self.text_set not in ("lines", "concatenated"):
            raise ValueError(f"Protocol.text_set must be 'lines' or 'concatenated', got {self.text_set!r}")
        if self.attention_source not in ("model", "projections"):
            raise ValueError(
                f"Protocol.attention_source must be 'model' or 'projections', got {self.attention_source!r}"
            )
        if self.stats_dtype not in ("float64", "float32", "auto", "fp16-eager"):
            raise ValueError(
                f"Protocol.stats_dtype must be float64, float32, auto or fp16-eager, got {self.stats_dtype!r}"
            )
        if self.spike_rule not in SPIKE_RULES:
            raise ValueError(
                f"Protocol.spike_rule must be one of {', '.join(SPIKE_RULES)}, got {self.spike_rule!r}"
            )
        if self.prompt_tokens is not None:
            object.__setattr__(self, "prompt_tokens", tuple(self.prompt_tokens))  # a JSON list reads back
            lo, hi = self.prompt_tokens
            if not 1 <= lo <= hi or hi + 1 > self.max_tokens:
                raise ValueError(
                    f"Protocol.prompt_tokens must be (lo, hi) with 1 <= lo <= hi < max_tokens ({self.max_tokens}), "
                    f"got {self.prompt_tokens!r}"
                )
        if not 0.0 < self.sink_tau < 1.0:
            raise ValueError(f"Protocol.sink_tau must be in (0, 1), got {self.sink_tau}")
        if self.padding_in_stats and self.pad_to is None:
            raise ValueError("Protocol.padding_in_stats needs pad_to (the length rows are padded to)")
        if self.pad_to is not None and self.pad_to < self.max_tokens:
            raise ValueError(f"Protocol.pad_to ({self.pad_to}) must be >= max_tokens ({self.max_tokens})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Protocol:
        return dataclasses.replace(self, **changes)


#: Fields that change only statistics computed from one pass's per-sequence values, never a forward pass.
STATISTICS_FIELDS: tuple[str, ...] = ("sink_tau", "sink_strict", "sink_self_term", "spike_rule")

FAITHFUL = Protocol()
