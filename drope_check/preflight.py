"""Checks that run before any weights load, so a bad input costs seconds, not a measurement.

``drope-check measure`` on a 7B pair loads and measures the RoPE model for many minutes before it
touches the DroPE model, and writes its output only at the end. Everything that can be checked
without weights is therefore checked first, each failure a :class:`~drope_check.errors.UserError`
whose message names the input and the fix:

* each model source: the embedded GGUF is installed; a local directory exists, its config.json is
  readable JSON, it has safetensors weights and a tokenizer that loads and knows the BOS token; a
  DroPE checkpoint is one the native loader implements, with both QK-norm weights where it needs
  them; a path that does not exist is never tried as a hub id (a hub id's config is read instead);
* the device, dtype and quantization (a CUDA device exists, bitsandbytes is installed); a device map
  (accelerate is installed, the pair's models are not embedded, an offload folder is a writable folder);
* the text source (a given WikiText path or ``DROPE_CHECK_WIKITEXT`` names a readable file);
* the outputs (``--out``'s folder exists and is writable and ``--out`` is no folder; a report
  folder can be created and written): :mod:`drope_check.output_paths`, re-exported here.

A checkpoint whose tensors do not match its model (missing, unexpected, mis-shaped) is refused by
the loader itself (:func:`drope_check.models.loading.load_model`), from transformers' own loading info,
before the model is measured.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from drope_check.engine.architectures import UnsupportedArchitecture, architecture_for_model_type
from drope_check.engine.texts import ENV_WIKITEXT
from drope_check.errors import UserError
from drope_check.models.availability import gpu_refusal
from drope_check.models.checkpoints import require_qk_norm_tensors, safetensors_files
from drope_check.models.embedded import EmbeddedUnavailable, is_embedded
from drope_check.models.hub import TOKENIZER_FILES
from drope_check.models.loading import load_tokenizer, resolve_token_id
from drope_check.models.native_drope import (
    is_drope_config,
    llama_config_from_drope,
    native_drope_attention_type,
    read_config_dict,
)
from drope_check.models.pairs import ModelLoadError, ModelSpec, PairSpec, embedded_model
from drope_check.models.quantization import DEVICE_MAPS
from drope_check.output_paths import (  # re-exported: they live in a module without torch
    check_output_file,
    check_output_folder,
)

__all__ = [
    "check_device",
    "check_device_map",
    "check_model_source",
    "check_needs_gpu",
    "check_output_file",
    "check_output_folder",
    "check_pair",
    "check_text_source",
]

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


# ----------------------------------------------------------------------------------------------
# models


def _check_local_dir(folder: Path, cfg: dict[str, Any], name: str) -> None:
    safetensors_files(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(
                f"{index} is not a valid safetensors index ({exc}); copy the checkpoint again"
            ) from exc
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelLoadError(
                f"{name}: shard(s) {', '.join(missing)} listed in {index} are missing; copy the checkpoint again"
            )
    present = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not present:
        raise ModelLoadError(
            f"{name}: no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files "
            "of the model into the folder (`tokenizer.save_pretrained(folder)`)"
        )
    if present == ["vocab.json"] and not (folder / "merges.txt").is_file():
        raise ModelLoadError(f"{name}: {folder} has vocab.json but no merges.txt; copy both tokenizer files")
    if "tokenizer.json" not in present and {"tokenizer.model", "spiece.model"} & set(present):
        if importlib.util.find_spec("sentencepiece") is None:
            raise ModelLoadError(
                f"{name}: the tokenizer in {folder} is a sentencepiece model and sentencepiece is not installed; "
                "`pip install sentencepiece`, or save the tokenizer as tokenizer.json"
            )


def _check_model_type(cfg: dict[str, Any], config_file: str, trust_remote_code: bool) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if not trust_remote_code and model_type not in CONFIG_MAPPING_NAMES:
        raise ModelLoadError(
            f"{config_file}: model_type {model_type!r} is unknown to transformers; use a supported checkpoint "
            "(or --trust-remote-code to run the checkpoint's own code)"
        )
    try:  # a family the engine has no adapter for is refused with the supported list
        architecture_for_model_type(model_type)
    except UnsupportedArchitecture as exc:
        raise ModelLoadError(f"{config_file}: {exc}") from None


def check_model_source(spec: ModelSpec, bos_token: str | None, trust_remote_code: bool = False) -> None:
    """Everything about one model of a pair that can be known without loading its weights."""
    name = spec.describe()
    if is_embedded(spec.source):
        try:  # the package (and every chunk) is there; nothing is read or written yet
            embedded_model(spec.source).check_installed()
        except EmbeddedUnavailable as exc:
            raise ModelLoadError(str(exc)) from None
        if importlib.util.find_spec("gguf") is None:
            raise ModelLoadError("loading the embedded GGUF model needs `pip install gguf accelerate`")
        return
    cfg = read_config_dict(spec.source, spec.revision)  # refuses a missing path, names a bad config.json
    local = Path(spec.source)
    config_file = str(local / "config.json") if local.is_dir() else f"{spec.source}: config.json"
    tokenizer_config = None
    if is_drope_config(cfg) and not trust_remote_code:
        attention_type = native_drope_attention_type(cfg, name)
        try:
            tokenizer_config = llama_config_from_drope(cfg)
        except Exception as exc:
            raise ModelLoadError(
                f"{config_file} is not a valid Llama config ({type(exc).__name__}: {exc})"
            ) from exc
        if local.is_dir():
            require_qk_norm_tensors(local, tokenizer_config.num_hidden_layers, attention_type, name)
    else:
        _check_model_type(cfg, config_file, trust_remote_code)
    if local.is_dir():
        _check_local_dir(local, cfg, name)
    try:
        tokenizer = load_tokenizer(spec.source, spec.revision, trust_remote_code, config=tokenizer_config)
    except Exception as exc:
        raise ModelLoadError(
            f"{name}: its tokenizer does not load ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check the tokenizer files of the checkpoint"
        ) from exc
    resolve_token_id(tokenizer, bos_token, "bos", name)


def check_device(device: str | None, dtype: str | None, quantization: str | None) -> None:
    """``--device`` names a device that exists here, ``--dtype`` a supported dtype, and
    ``--quantization`` has a CUDA device and bitsandbytes."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if device is None:
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
        if resolved.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(
                    f"--device {device}: no CUDA device is visible here; use --device cpu or run on a GPU machine"
                )
            if resolved.index is not None and resolved.index >= torch.cuda.device_count():
                raise UserError(
                    f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0"
                    f"..cuda:{torch.cuda.device_count() - 1}"
                )
        elif resolved.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"--device {device}: MPS is not available here; use --device cpu")
        elif resolved.type not in ("cpu", "cuda", "mps"):
            raise UserError(f"--device {device!r}: drope_check runs on cpu, cuda or mps only")
    if quantization is not None:
        if resolved.type != "cuda":
            raise UserError(
                f"--quantization {quantization} needs a CUDA device (bitsandbytes 4-bit), and the device is "
                f"{resolved}; leave --quantization out to run unquantized"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(f"--quantization {quantization} needs bitsandbytes: `pip install bitsandbytes`")


def check_device_map(
    pair: PairSpec, device_map: str | None, device: str | None, offload_folder: str | None
) -> None:
    """``--device-map`` is one of accelerate's maps, accelerate is installed, ``--device`` is not given too, the
    pair's models are hub ids or local directories (an embedded model fits one device), and ``--offload-folder``
    (only with a device map) is a folder that can be created and written."""
    if device_map is None:
        if offload_folder is not None:
            raise UserError(
                "--offload-folder holds the layers a device map offloads to disk; give --device-map auto with it"
            )
        return
    if device_map not in DEVICE_MAPS:
        raise UserError(
            f"--device-map {device_map!r} is not one of accelerate's maps; use {', '.join(DEVICE_MAPS)}"
        )
    if device is not None:
        raise UserError(
            f"--device {device} and --device-map {device_map} exclude each other: a device map places every layer itself"
        )
    if importlib.util.find_spec("accelerate") is None:
        raise UserError(
            f"--device-map {device_map} needs accelerate: `pip install accelerate` (or the extra [gpu])"
        )
    embedded = [m.source for m in pair.models() if is_embedded(m.source)]
    if embedded:
        raise UserError(
            f"--device-map applies to hub ids and local directories; pair {pair.name}'s {embedded[0]} model fits one "
            "device, so leave --device-map out"
        )
    if offload_folder is not None:
        check_output_folder(offload_folder, "--offload-folder")


def check_needs_gpu(pair: PairSpec, device: str | None) -> None:
    """A pair that needs a GPU (7B models) runs on a CPU only when the user names the device
    (:func:`drope_check.models.availability.gpu_refusal`)."""
    why = gpu_refusal(pair, device)
    if why is not None:
        raise UserError(why)


def check_pair(
    pair: PairSpec,
    *,
    device: str | None = None,
    dtype: str | None = None,
    quantization: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | None = None,
    offload_folder: str | None = None,
) -> None:
    """Device options and both model sources, before either model's weights load."""
    check_device(device, dtype, quantization)
    check_device_map(pair, device_map, device, offload_folder)
    check_needs_gpu(pair, device)
    for spec in pair.models():
        check_model_source(spec, pair.bos_token, trust_remote_code)


# ----------------------------------------------------------------------------------------------
# texts


def check_text_source(wikitext: str | os.PathLike[str] | None) -> None:
    """A WikiText path given as an option or through ``DROPE_CHECK_WIKITEXT`` names a readable file."""
    for path, origin in ((wikitext, "--wikitext"), (os.environ.get(ENV_WIKITEXT) or None, ENV_WIKITEXT)):
        if path is None:
            continue
        file = Path(path)
        if not file.exists():
            raise UserError(
                f"{origin} {str(file)!r} does not exist; point it at wiki.test.raw (WikiText-2 raw, test split)"
            )
        if not file.is_file():
            raise UserError(f"{origin} {str(file)!r} is not a file; point it at wiki.test.raw itself")
        try:
            with open(file, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise UserError(
                f"{origin} {str(file)!r} cannot be read ({exc.strerror or exc}); check its permissions"
            ) from exc
        return  # the option wins over the environment variable
