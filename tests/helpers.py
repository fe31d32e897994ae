"""Helpers shared by the test modules (``tests/`` is on ``sys.path``: ``from helpers import ...``).

One place each for what several test files need: where the WikiText-2 test file and the report
author's result files are (resolved as the package resolves them, never by a machine path), and the
per-layer outputs of a decoder. The fixtures over these live in ``tests/conftest.py``
(``wikitext_path``, ``author_files_path``); module-level ``skipif`` marks call the functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from drope_check.engine.texts import ENV_WIKITEXT
from drope_check.sources.author_files import AuthorFilesUnavailable, locate_upstream

#: The repository root (the checkout this file belongs to).
REPO = Path(__file__).resolve().parent.parent
#: Where the workplace's copy of WikiText-2's ``wiki.test.raw`` lies, relative to a folder above the
#: repository (``.ci/run`` runs from a clone with ``../shared`` beside it, as for the author's files).
SHARED_WIKITEXT = Path("shared") / "data" / "wikitext-2-raw" / "wiki.test.raw"


def wikitext_file() -> Path | None:
    """The local ``wiki.test.raw``: ``$DROPE_CHECK_WIKITEXT`` (the package's file route,
    :data:`drope_check.engine.texts.ENV_WIKITEXT`) when set, even when it names no file (as in the package,
    a path given but broken is an error, never a fallback: the tests then fail naming it), else the
    nearest ``shared/data/wikitext-2-raw`` copy over the repository's ancestors; None when there is
    none (the package would then try ``datasets``, which the tests do not)."""
    env = os.environ.get(ENV_WIKITEXT)
    if env:
        return Path(env).expanduser().resolve()
    for ancestor in REPO.parents:
        if (ancestor / SHARED_WIKITEXT).is_file():
            return ancestor / SHARED_WIKITEXT
    return None


#: Why a test needing :func:`wikitext_file` is skipped when it returns None.
NO_WIKITEXT = f"WikiText-2 test file not found: set {ENV_WIKITEXT}=PATH to wiki.test.raw (or put shared/ beside the repository)"


def author_files_folder() -> Path | None:
    """The report author's committed result files, found by the package's own
    :func:`drope_check.sources.author_files.locate_upstream` (``$DROPE_CHECK_UPSTREAM``, else the nearest
    ``shared/data/upstream-results`` over the repository's ancestors); None when there is none."""
    try:
        return locate_upstream(None, [REPO])
    except AuthorFilesUnavailable:
        return None


#: Why a test needing :func:`author_files_folder` is skipped when it returns None.
NO_AUTHOR_FILES = (
    "the author's files were not found (set DROPE_CHECK_UPSTREAM or put shared/ beside the repository)"
)


def layer_outputs(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """The output hidden state of every decoder layer of ``model`` (``model.model.layers``) on ``ids``,
    in layer order, copied out of a no-grad forward without cache (forward hooks, removed after)."""
    outs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(
            lambda m, i, o: outs.append((o[0] if isinstance(o, tuple) else o).detach().clone())
        )
        for layer in model.model.layers
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return outs
