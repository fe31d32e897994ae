"""The report's BOS-MLP ablation: the feed-forward branch's write into the residual zeroed at the BOS row of
one layer (see :mod:`drope_check.engine.interventions` for upstream's definition and its confound)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from drope_check.engine.architectures import architecture_of

if TYPE_CHECKING:
    pass
from drope_check.engine.intervention_record import InterventionRecord, check_layer, module_names, track_calls


@contextlib.contextmanager
def bos_mlp_ablation(
    model: torch.nn.Module, layer: int, every_call: bool = False
) -> Iterator[InterventionRecord]:
    """Zero the feed-forward write of ``layers[layer]`` at each sequence's BOS row while open.

    What is claimed: the report's "BOS-MLP ablation" = a forward hook on ``layers[L].mlp`` setting
    ``output[:, 0, :] = 0``. The hooked module is the architecture's ``block_mlp_write`` (the output
    that is added to the residual): Llama's ``mlp``; Gemma 3's ``post_feedforward_layernorm``. (Zeroing
    Gemma's MLP output instead has the same effect, as the RMSNorm of a zero row is zero, but the
    recorded norm would then be of the pre-norm tensor, not of what the block wrote into BOS.) For right-padded batches (this suite's convention) and any uncached call
    that is exactly what happens here: row 0 of every sequence is its BOS. Two deliberate differences:

    * With LEFT padding (a 2-D ``attention_mask`` whose rows start with zeros) the row zeroed is each
      sequence's first real token, not the pad at index 0.
    * During cached generation a call holds only new tokens; it contains no sequence's first token
      and is left untouched (counted in ``record.skipped_calls``). Upstream's hook zeroed row 0 of
      every call, i.e. also every newly generated token, which ablates a different position at each
      decoding step (a bias of generation-based numbers). ``every_call=True`` reproduces upstream's
      hook exactly (row 0 of every call, whatever it holds) so the confound can be measured.

    The position of the first token is read from a forward pre-hook on ``model.model``: the KV
    cache's length and the 2-D attention mask of the call.

    Yields:
        An :class:`InterventionRecord` (kind ``"bos_mlp_ablation"``) with one ``touched`` entry per
        zeroed row holding the L2 norm of the MLP output that was removed.

    Raises:
        ValueError: ``layer`` outside ``0..num_layers-1`` (the message names the model and range).
    """
    layer = check_layer(model, layer)
    arch = architecture_of(model)
    mlp = arch.mlp_write(arch.decoder_layers(model)[layer])
    name = module_names(model).get(id(mlp), f"layers.{layer}.{arch.block_mlp_write}")
    record = InterventionRecord(
        kind="bos_mlp_ablation",
        rule="every-call" if every_call else "bos",
        layers=[layer],
        params={"layer": layer, "every_call": every_call},
    )
    calls = 0

    with track_calls(model) as state:

        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            call = calls
            calls += 1
            record._count_call(name)
            batch, length = output.shape[0], output.shape[1]
            if every_call:
                rows = [(b, 0) for b in range(batch)]
            else:
                if state.mask2d is not None and state.mask2d.shape[0] == batch:
                    mask = state.mask2d != 0
                    first = mask.to(torch.int8).argmax(dim=1).tolist()
                    has_real = mask.any(dim=1).tolist()
                    offset = state.past + length - mask.shape[1]  # absolute index of mask column 0
                    firsts = [f + offset if ok else None for f, ok in zip(first, has_real, strict=True)]
                else:
                    firsts = [0] * batch
                rows = [
                    (b, f - state.past)
                    for b, f in enumerate(firsts)
                    if f is not None and 0 <= f - state.past < length
                ]
            if not rows:
                record.skipped_calls += 1
                return output
            b_idx = torch.tensor([r[0] for r in rows], device=output.device)
            t_idx = torch.tensor([r[1] for r in rows], device=output.device)
            removed = torch.linalg.vector_norm(output[b_idx, t_idx].float(), dim=-1).tolist()
            new = output.clone()
            new[b_idx, t_idx] = 0
            for (b, t), norm in zip(rows, removed, strict=True):
                record.touched.append(
                    {"layer": layer, "call": call, "row": b, "position": t, "bos_mlp_output_norm": norm}
                )
            return new

        handle = mlp.register_forward_hook(hook)
        try:
            yield record
        finally:
            handle.remove()
