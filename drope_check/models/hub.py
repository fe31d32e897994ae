"""Where a pair's hub weights are, and how they get here: the local HF cache or a download.

A hub model is in one of these states (:class:`ModelStatus`), decided without downloading anything:

* ``cached``: a complete snapshot (config, tokenizer, every safetensors shard the index names) is in
  the local HF cache; nothing is asked of the hub.
* ``downloadable``: not cached, and the hub (``HF_ENDPOINT``) lists the files; the size to download
  is the sum of the matching files' sizes from the repo's file metadata.
* ``gated``: the repo is gated and no token is set (``HF_TOKEN``), or the token has no access.
* ``not-found``: the repo or revision does not exist (or is private and the token cannot read it).
* ``unreachable``: ``HF_HUB_OFFLINE`` is set, or the hub did not answer; the reason says which.

Downloads use ``huggingface_hub``'s own client (``snapshot_download``): only the files a
measurement needs (:data:`WEIGHT_PATTERNS`: config, generation config, tokenizer files, safetensors
and their index; never pickled ``*.bin`` / ``*.pth`` weights), into the HF cache, with the client's
progress bars (``HF_HUB_DISABLE_PROGRESS_BARS`` silences them). Files completed by an interrupted
run stay in the cache, so a rerun downloads only what is missing, and the client resumes a broken
transfer with an HTTP Range request. ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME`` / ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE`` act exactly as they do for ``huggingface_hub``: this module passes ``None`` for
the endpoint, token and cache folder unless a caller names them, and the client resolves them.

A cached snapshot is found without any request to the hub, so a second run on a warm cache (the
GPU runner's persistent ``HF_HOME``) never talks to the hub; the models then load from the
snapshot folder (:func:`resolve_model`), the hub id and commit kept for provenance.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drope_check.errors import UserError
from drope_check.models.embedded import is_embedded
from drope_check.models.pairs import ModelSpec, PairSpec, looks_like_local_path

__all__ = [
    "REMOTE_CODE_PATTERNS",
    "TOKENIZER_FILES",
    "WEIGHT_PATTERNS",
    "HubUnavailable",
    "ModelStatus",
    "cached_snapshot",
    "endpoint_url",
    "first_line",
    "gated_status",
    "hub_token",
    "patterns_for",
    "snapshot_complete",
    "hub_models",
    "is_hub_model",
    "human_size",
    "model_status",
    "refusal",
]

#: Files any one of which lets transformers build a tokenizer (``vocab.json`` needs ``merges.txt``).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
)
#: The files a measurement reads: config, generation config, tokenizer, safetensors shards and index.
#: Never ``*.bin`` / ``*.pth`` / ``*.pt`` (pickles: drope_check never unpickles weights).
WEIGHT_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.safetensors",
    "model.safetensors.index.json",
)
#: Added with ``--trust-remote-code`` only: the checkpoint's own code, which the user opted in to run.
REMOTE_CODE_PATTERNS: tuple[str, ...] = ("*.py",)

State = Literal["cached", "downloadable", "gated", "not-found", "unreachable"]


class HubUnavailable(UserError):
    """A model cannot be had here (gated without a token, unknown repo, hub unreachable); the
    message is one sentence naming the repo and the fix."""


@dataclass(frozen=True)
class ModelStatus:
    """Where one hub model stands. ``detail`` is one sentence; ``size`` counts bytes to download
    (``downloadable``) or on disk (``cached``); ``snapshot`` is the cached snapshot folder."""

    repo_id: str
    state: State
    detail: str
    size: int | None = None
    n_files: int | None = None
    snapshot: Path | None = None
    commit: str | None = None

    @property
    def usable(self) -> bool:
        """The weights are here or can be downloaded."""
        return self.state in ("cached", "downloadable")

    def summary(self) -> str:
        """``cached (12.6 GB)``, ``downloadable (13.5 GB, 7 files)``, or the state and its sentence."""
        if self.state == "cached":
            return f"cached ({human_size(self.size)}) in {self.snapshot}"
        if self.state == "downloadable":
            return f"downloadable ({human_size(self.size)}, {self.n_files} files)"
        label = {"gated": "gated without access", "not-found": "not found", "unreachable": "unreachable"}[
            self.state
        ]
        return f"{label}: {self.detail}"


def human_size(n: int | None) -> str:
    """Bytes in decimal units, as the hub shows them (``13.5 GB``)."""
    if n is None:
        return "size unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def patterns_for(trust_remote_code: bool = False) -> list[str]:
    return [*WEIGHT_PATTERNS, *(REMOTE_CODE_PATTERNS if trust_remote_code else ())]


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def endpoint_url(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def snapshot_complete(folder: Path) -> bool:
    """A snapshot a measurement can load: config.json, a tokenizer, safetensors weights, and every
    shard its ``model.safetensors.index.json`` names."""
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return False
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return all((folder / shard).is_file() for shard in shards)
    return True


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def cached_snapshot(
    repo_id: str,
    revision: str | None = None,
    *,
    patterns: Sequence[str] = WEIGHT_PATTERNS,
    cache_dir: str | None = None,
) -> Path | None:
    """The complete cached snapshot of ``repo_id`` at ``revision`` (default branch when None), found
    without any request to the hub; None when it is missing or incomplete."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(patterns),
                cache_dir=cache_dir,
                local_files_only=True,
            )
        )
    except (
        LocalEntryNotFoundError,
        OSError,
        ValueError,
    ):  # IncompleteSnapshotError is a LocalEntryNotFoundError / OSError
        return None
    return folder if snapshot_complete(folder) else None


def model_status(
    repo_id: str,
    revision: str | None = None,
    *,
    patterns: Sequence[str] = WEIGHT_PATTERNS,
    token: str | bool | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> ModelStatus:
    """Where ``repo_id`` stands here (see the module docstring); never downloads and never raises for
    a hub problem. Asks the hub only when the snapshot is not cached: the repo's file metadata
    (``HfApi.model_info(files_metadata=True)``) and, for a gated repo with a token, a HEAD request on
    its config.json (the one way to learn whether the token was granted access).

    ``token``, ``endpoint``, ``cache_dir``: None leaves them to huggingface_hub (``HF_TOKEN`` or the
    saved login, ``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE``); ``token=False`` sends none."""
    folder = cached_snapshot(repo_id, revision, patterns=patterns, cache_dir=cache_dir)
    if folder is not None:
        return ModelStatus(
            repo_id,
            "cached",
            f"{repo_id} is in the local HF cache ({folder})",
            size=_folder_size(folder),
            snapshot=folder,
            commit=folder.name,
        )
    where = endpoint_url(endpoint)
    if _offline():
        return ModelStatus(
            repo_id,
            "unreachable",
            (
                f"{repo_id}: not in the local HF cache, and HF_HUB_OFFLINE is set so nothing is downloaded; unset "
                "HF_HUB_OFFLINE on a machine with hub access (or put the weights in the HF cache of HF_HOME)"
            ),
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, revision=revision, files_metadata=True
        )
    except GatedRepoError:
        return gated_status(repo_id, where, hub_token(token))
    except RevisionNotFoundError:
        return ModelStatus(
            repo_id, "not-found", f"{repo_id} has no revision {revision!r} on {where}; check the revision"
        )
    except RepositoryNotFoundError:
        return ModelStatus(
            repo_id,
            "not-found",
            (
                f"{repo_id} does not exist on {where}, or it is private and the token (HF_TOKEN) cannot read it; "
                "check the repo id and the token"
            ),
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        return ModelStatus(
            repo_id, "unreachable", f"{repo_id}: {where} answered HTTP {status} ({first_line(exc)})"
        )
    except Exception as exc:  # connection refused, DNS, timeout, proxy: the hub is not reachable from here
        return ModelStatus(
            repo_id,
            "unreachable",
            (
                f"{repo_id}: {where} cannot be reached ({type(exc).__name__}: {first_line(exc)}); check the network "
                "or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only the local HF cache"
            ),
        )
    files = [s for s in info.siblings or () if _matches(s.rfilename, patterns)]
    size = sum((s.lfs.size if s.lfs is not None else s.size) or 0 for s in files)
    if not any(fnmatch.fnmatch(s.rfilename, "*.safetensors") for s in files):
        return ModelStatus(
            repo_id,
            "not-found",
            (
                f"{repo_id} on {where} has no .safetensors weights (drope_check never unpickles .bin files); "
                "use a checkpoint saved with safe_serialization=True"
            ),
        )
    if info.gated:
        token_value = hub_token(token)
        if token_value is None:
            return gated_status(repo_id, where, None)
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        try:
            get_hf_file_metadata(
                hf_hub_url(repo_id, "config.json", revision=info.sha, endpoint=endpoint),
                token=token_value,
                endpoint=endpoint,
            )
        except (GatedRepoError, RepositoryNotFoundError):
            return gated_status(repo_id, where, token_value)
        except Exception as exc:
            return ModelStatus(
                repo_id,
                "unreachable",
                (
                    f"{where} did not answer a file request for {repo_id} ({type(exc).__name__}: {first_line(exc)})"
                ),
            )
    return ModelStatus(
        repo_id,
        "downloadable",
        f"{repo_id} can be downloaded from {where} ({human_size(size)})",
        size=size,
        n_files=len(files),
        commit=info.sha,
    )


def hub_token(token: str | bool | None) -> str | None:
    """The token a request sends: the given one, none for False, else huggingface_hub's own
    (``HF_TOKEN``, then the saved login under ``HF_HOME``)."""
    from huggingface_hub import get_token

    if token is None or token is True:
        return get_token()
    return token or None


def gated_status(repo_id: str, where: str, token: str | None) -> ModelStatus:
    if token is None:
        detail = (
            f"{repo_id} is gated and no token is set: set HF_TOKEN to a token of an account that was granted "
            f"access at {where}/{repo_id}"
        )
    else:
        detail = (
            f"{repo_id} is gated and the token in HF_TOKEN has no access to it: request access at "
            f"{where}/{repo_id} with that account, or use another token"
        )
    return ModelStatus(repo_id, "gated", detail)


def is_hub_model(spec: ModelSpec) -> bool:
    """Whether a model of a pair comes from the hub (neither embedded nor a local directory, nor
    already resolved to its snapshot)."""
    if spec.hub_id is not None or is_embedded(spec.source):
        return False
    return not Path(spec.source).is_dir() and not looks_like_local_path(spec.source)


def hub_models(pair: PairSpec) -> list[ModelSpec]:
    """The models of a pair that come from the hub (:func:`is_hub_model`)."""
    return [m for m in pair.models() if is_hub_model(m)]


def refusal(statuses: Sequence[ModelStatus]) -> str:
    """One sentence for the models that cannot be had: each refused model's detail, the details that
    differ only in the repo id said once for all of them (``A and B: <endpoint> cannot be reached ...``)."""
    merged: dict[str, list[str]] = {}
    for status in statuses:
        if not status.usable:
            merged.setdefault(status.detail.replace(status.repo_id, "\0"), []).append(status.repo_id)
    return "; ".join(
        template.replace("\0", " and ".join(repos), 1).replace("\0", repos[-1])
        for template, repos in merged.items()
    )
