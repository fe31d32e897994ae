"""Fixtures of the download-path tests: a local hub endpoint serving the report's repo ids.

``hub_root`` writes the tiny stand-ins of ``meta-llama/Llama-2-7b-hf`` (gated) and
``SakanaAI/Llama-2-7b-hf-DroPE`` in their published layout (:mod:`drope_check.models.rehearsal_repos`) once
per session; ``local_hub`` serves them from a server process (:mod:`drope_check.models.local_hub`) that
``huggingface_hub``'s own client reaches over HTTP through ``HF_ENDPOINT``. ``hub_env`` is the
environment of a child process that uses it, from an empty HF cache. (Test modules take these as
fixtures; nothing is imported from this file: two conftest.py files make ``import conftest`` ambiguous.)

Shared by every test module: ``wikitext_path`` (the local ``wiki.test.raw``) and ``author_files_path``
(the report author's committed result files), both resolved by :mod:`helpers` through the package's
own lookup and skipping the test when there is none; ``slow`` marks set from what a test uses
(:func:`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import NO_AUTHOR_FILES, NO_WIKITEXT, REPO, author_files_folder, wikitext_file

from drope_check.models.rehearsal_repos import GRANTED_TOKEN

#: Environment variables of huggingface_hub / transformers that a child must not inherit: the child
#: gets its own endpoint, cache and token (CI sets HF_HUB_OFFLINE=1 for everything else).
HUB_VARIABLES = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_HOME",
    "HF_ENDPOINT",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "HF_TOKEN_PATH",
    "DROPE_CHECK_WIKITEXT",
)


@pytest.fixture(scope="session")
def wikitext_path() -> Path:
    """The local WikiText-2 ``wiki.test.raw`` (:func:`helpers.wikitext_file`); skips the test without one."""
    path = wikitext_file()
    if path is None:
        pytest.skip(NO_WIKITEXT)
    return path


@pytest.fixture(scope="session")
def author_files_path() -> Path:
    """The report author's result files (:func:`helpers.author_files_folder`, i.e. ``locate_upstream``);
    skips the test without a copy."""
    path = author_files_folder()
    if path is None:
        pytest.skip(NO_AUTHOR_FILES)
    return path


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in repos; with the workplace's WikiText-2 copy, also ``Salesforce/wikitext`` built
    from it, so a child loads its texts through ``datasets`` from the local hub as the GPU job does."""
    from drope_check.engine.texts import load_wikitext_rows
    from drope_check.models.rehearsal_repos import build_hub_root

    wikitext = wikitext_file()
    rows = load_wikitext_rows(wikitext)[0] if wikitext is not None else None
    return build_hub_root(tmp_path_factory.mktemp("hub-root"), wikitext_rows=rows)


@pytest.fixture(scope="session")
def local_hub(hub_root: Path) -> Iterator[object]:
    from drope_check.models.local_hub import local_hub_process

    with local_hub_process(hub_root, tokens=[GRANTED_TOKEN]) as hub:
        yield hub


@pytest.fixture(scope="session")
def hub_env() -> Callable[..., dict[str, str]]:
    """``hub_env(endpoint, hf_home, token=GRANTED_TOKEN)``: the environment of a child process (see below)."""
    return make_hub_env


def make_hub_env(endpoint: str, hf_home: Path, token: str | None = GRANTED_TOKEN) -> dict[str, str]:
    """The environment of a child process that talks to ``endpoint`` with an HF cache in ``hf_home``
    (no ``HF_TOKEN`` when ``token`` is None).

    No ``DROPE_CHECK_WIKITEXT``: the texts come through ``datasets`` from the endpoint, as on a GPU
    runner. One torch thread: the models are tiny, and OpenMP threads spinning against the other jobs
    of a 2-core CI machine made a 7 s measurement take 95 s."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env
