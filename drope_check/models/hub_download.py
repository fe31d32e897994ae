"""Downloading a pair's weights into the HF cache (``drope-check fetch``, and any measurement of a hub
model not cached yet): huggingface_hub's own client, only the files a measurement reads
(:data:`drope_check.models.hub.WEIGHT_PATTERNS`), resumable, the size said first. What is cached or
reachable is decided in :mod:`drope_check.models.hub`."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from drope_check.models.hub import (
    WEIGHT_PATTERNS,
    HubUnavailable,
    ModelStatus,
    endpoint_url,
    first_line,
    gated_status,
    hub_models,
    hub_token,
    human_size,
    is_hub_model,
    model_status,
    patterns_for,
    refusal,
    snapshot_complete,
)
from drope_check.models.pairs import ModelSpec, PairSpec

__all__ = ["fetch_model", "fetch_pair", "resolve_model", "resolve_pair"]


class _QuietTqdm:
    """A tqdm stand-in that shows nothing (``progress=False``)."""

    def __new__(cls, *args, **kwargs):
        from tqdm.auto import tqdm

        kwargs["disable"] = True
        return tqdm(*args, **kwargs)


def fetch_model(
    repo_id: str,
    revision: str | None = None,
    *,
    patterns: Sequence[str] = WEIGHT_PATTERNS,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
    status: ModelStatus | None = None,
) -> Path:
    """The snapshot folder of ``repo_id``, downloaded first when it is not cached (the size is said
    before the download starts). Raises :class:`HubUnavailable` (one sentence) when it is gated
    without access, unknown, or the hub is unreachable -- before any byte is downloaded. ``status``:
    the model's :func:`model_status`, when the caller has it already."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if status is None:
        status = model_status(
            repo_id, revision, patterns=patterns, token=token, endpoint=endpoint, cache_dir=cache_dir
        )
    if status.state == "cached":
        assert status.snapshot is not None
        say(f"{repo_id}: cached ({human_size(status.size)}) in {status.snapshot}")
        return status.snapshot
    if status.state != "downloadable":
        raise HubUnavailable(status.detail)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    say(
        f"{repo_id}: downloading {status.n_files} files, {human_size(status.size)}, at commit {status.commit} "
        f"from {endpoint_url(endpoint)} into {cache_dir or constants.HF_HUB_CACHE}"
    )
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(patterns),
                token=token,  # type: ignore[arg-type]
                endpoint=endpoint,
                cache_dir=cache_dir,
                tqdm_class=None if progress else _QuietTqdm,
            )
        )  # type: ignore[arg-type]
    except (GatedRepoError, RepositoryNotFoundError):
        raise HubUnavailable(gated_status(repo_id, endpoint_url(endpoint), hub_token(token)).detail) from None
    except Exception as exc:
        raise HubUnavailable(
            f"downloading {repo_id} from {endpoint_url(endpoint)} failed ({type(exc).__name__}: {first_line(exc)}); "
            "rerun the same command: files already downloaded are kept"
        ) from exc
    if not snapshot_complete(folder):
        raise HubUnavailable(
            f"{repo_id}: the downloaded snapshot {folder} lacks config, tokenizer or weight files"
        )
    say(f"{repo_id}: downloaded to {folder}")
    return folder


def fetch_pair(
    pair: PairSpec,
    *,
    progress: bool = True,
    trust_remote_code: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Every hub model of a pair, cached or downloaded (hub id -> snapshot folder). Every model's
    status is checked before the first download, so a gated second model never costs the first
    one's download."""
    patterns = patterns_for(trust_remote_code)
    models = hub_models(pair)
    statuses = [model_status(m.source, m.revision, patterns=patterns) for m in models]
    if any(not s.usable for s in statuses):
        raise HubUnavailable(refusal(statuses))
    return {
        m.source: fetch_model(
            m.source, m.revision, patterns=patterns, progress=progress, say=say, status=status
        )
        for m, status in zip(models, statuses, strict=True)
    }


def _as_snapshot(spec: ModelSpec, folder: Path) -> ModelSpec:
    return dataclasses.replace(spec, source=str(folder), hub_id=spec.source, revision=folder.name)


def resolve_model(
    spec: ModelSpec,
    *,
    progress: bool = True,
    trust_remote_code: bool = False,
    say: Callable[[str], None] | None = None,
) -> ModelSpec:
    """A hub model as its local snapshot (downloaded first when needed): ``source`` becomes the
    folder, ``hub_id`` keeps the repo id and ``revision`` the snapshot's commit (the folder's name),
    so the loader never asks the hub again and provenance still names the repo. Other models are
    returned unchanged."""
    if not is_hub_model(spec):
        return spec
    return _as_snapshot(
        spec,
        fetch_model(
            spec.source, spec.revision, patterns=patterns_for(trust_remote_code), progress=progress, say=say
        ),
    )


def resolve_pair(
    pair: PairSpec,
    *,
    progress: bool = True,
    trust_remote_code: bool = False,
    say: Callable[[str], None] | None = None,
) -> PairSpec:
    """The pair with each hub model replaced by its local snapshot (:func:`resolve_model`); every
    model's status is checked before any download (:func:`fetch_pair`)."""
    if not hub_models(pair):
        return pair
    folders = fetch_pair(pair, progress=progress, trust_remote_code=trust_remote_code, say=say)

    def local(spec: ModelSpec) -> ModelSpec:
        return _as_snapshot(spec, folders[spec.source]) if is_hub_model(spec) else spec

    return dataclasses.replace(pair, rope=local(pair.rope), drope=local(pair.drope))
