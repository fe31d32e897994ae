"""Tests for the drope-check command line: user errors fail fast and clearly, nothing is lost.

Every user error exits 2 with one sentence on stderr naming the input (a traceback only with
``--debug``), and is found before any weights load: ``drope_check.measurements.measure.load_model`` is replaced
by a guard that fails the test if it is ever called. No test here loads a model.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from test_models import make_checkpoint, make_qwen2_drope_checkpoint, rewrite_checkpoint

import drope_check.measurements.measure
from drope_check import atomic, cli
from drope_check.engine.texts import ENV_WIKITEXT
from drope_check.models.pairs import custom_pair

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model's weights start loading."""

    def guard(*_args, **_kwargs):
        raise AssertionError("load_model was called: the error was not found before loading weights")

    monkeypatch.setattr(drope_check.measurements.measure, "load_model", guard)


@pytest.fixture(scope="module")
def rope_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpts") / "rope"
    make_checkpoint(folder, drope=False)
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, *names: str) -> None:
    __tracebackhide__ = True
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    for name in names:
        assert name in err, f"{name!r} not named in: {err}"


# --------------------------------------------------------------------------------------------------
# model sources: a bad --drope never costs a RoPE measurement


def _missing(tmp: Path) -> tuple[Path, str]:
    return tmp / "no-such-dir", "does not exist"


def _a_file(tmp: Path) -> tuple[Path, str]:
    (tmp / "weights.gguf").write_bytes(b"GGUF")
    return tmp / "weights.gguf", "is a file"


def _no_config(tmp: Path) -> tuple[Path, str]:
    folder = tmp / "ckpt"
    make_checkpoint(folder, "qk_norm_nope")
    (folder / "config.json").unlink()
    return folder, "no config.json"


def _invalid_config(tmp: Path) -> tuple[Path, str]:
    folder = tmp / "ckpt"
    make_checkpoint(folder, "qk_norm_nope")
    (folder / "config.json").write_text('{"model_type": "llama_drope",')
    return folder, f"{folder / 'config.json'} is not valid JSON"  # names the file itself


def _bin_only(tmp: Path) -> tuple[Path, str]:
    folder = tmp / "ckpt"
    make_checkpoint(folder, "nope", weights="bin")
    return folder, "no .safetensors files"


def _no_tokenizer(tmp: Path) -> tuple[Path, str]:
    folder = tmp / "ckpt"
    make_checkpoint(folder, "qk_norm_nope")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return folder, "no tokenizer"


def _qwen2_drope(tmp: Path) -> tuple[Path, str]:
    folder = tmp / "ckpt"
    make_qwen2_drope_checkpoint(folder)
    return folder, "'qwen2_drope'"


def _missing_k_norm(tmp: Path) -> tuple[Path, str]:
    folder = tmp / "ckpt"
    make_checkpoint(folder, "qk_norm_nope")
    rewrite_checkpoint(folder, drop=("model.layers.1.self_attn.k_norm.weight",))
    return folder, "model.layers.1.self_attn.k_norm.weight"


BAD_SOURCES = [
    _missing,
    _a_file,
    _no_config,
    _invalid_config,
    _bin_only,
    _no_tokenizer,
    _qwen2_drope,
    _missing_k_norm,
]


@pytest.mark.parametrize("make_bad", BAD_SOURCES, ids=lambda f: f.__name__.strip("_"))
def test_bad_drope_source_fails_before_any_weights_load(
    tmp_path, capsys, monkeypatch, no_weights, rope_dir, make_bad
):
    hub_calls: list[str] = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, *a, **k: hub_calls.append(repo))
    bad, what = make_bad(tmp_path)
    rc, _, err = run(
        capsys,
        "measure",
        "--rope",
        rope_dir,
        "--drope",
        bad,
        "--out",
        tmp_path / "m.json",
        "--device",
        "cpu",
        "--interventions",
        "none",
    )
    assert_user_error(rc, err, str(bad), what)
    assert hub_calls == []  # a local path is never tried as a hub id
    assert not (tmp_path / "m.json").exists()


def test_a_good_custom_pair_passes_the_preflight(tmp_path, rope_dir):
    """The refusals above are not a preflight that refuses everything."""
    from drope_check import preflight

    drope = tmp_path / "drope"
    make_checkpoint(drope, "qk_norm_nope")
    preflight.check_pair(custom_pair(str(rope_dir), str(drope), "<s>"), device="cpu")


def test_unknown_bos_token_is_found_by_the_preflight(tmp_path, capsys, no_weights, rope_dir):
    drope = tmp_path / "drope"
    make_checkpoint(drope, "nope")
    rc, _, err = run(
        capsys,
        "measure",
        "--rope",
        rope_dir,
        "--drope",
        drope,
        "--bos-token",
        "<|nope|>",
        "--out",
        tmp_path / "m.json",
        "--device",
        "cpu",
    )
    assert_user_error(rc, err, "'<|nope|>'", "--bos-token")


# --------------------------------------------------------------------------------------------------
# outputs: checked before the run, never lost after it


def _out_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "a-file").write_text("x")
    (tmp / "a-folder").mkdir()
    return {
        "folder-missing": (tmp / "no-such-folder" / "m.json", "does not exist"),
        "out-is-a-folder": (tmp / "a-folder", "is a folder"),
        "parent-is-a-file": (tmp / "a-file" / "m.json", "is a file"),
    }


@pytest.mark.parametrize("case", ["folder-missing", "out-is-a-folder", "parent-is-a-file"])
def test_bad_out_fails_before_the_run(tmp_path, capsys, no_weights, case):
    out, what = _out_cases(tmp_path)[case]
    rc, _, err = run(capsys, "measure", "--out", out, "--interventions", "none", "--device", "cpu")
    assert_user_error(rc, err, "--out", str(out), what)


@pytest.mark.skipif(
    IS_ROOT, reason="root writes into a read-only folder; the probe is tested with a file as parent"
)
def test_unwritable_out_folder_fails_before_the_run(tmp_path, capsys, no_weights):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        rc, _, err = run(
            capsys, "measure", "--out", folder / "m.json", "--interventions", "none", "--device", "cpu"
        )
    finally:
        folder.chmod(0o700)
    assert_user_error(rc, err, "--out", str(folder), "cannot write")


def test_report_dir_that_is_a_file_fails_before_judging(tmp_path, capsys):
    (tmp_path / "report").write_text("x")
    rc, _, err = run(
        capsys, "judge", tmp_path / "m.json", "--pair", "smollm2-135m", "--report-dir", tmp_path / "report"
    )
    assert_user_error(rc, err, "--report-dir", str(tmp_path / "report"), "is a file")


def fake_measurement(monkeypatch, result: dict | None = None, during=None):
    def measure_pair(*_args, **_kwargs):
        if during is not None:
            during()
        return result if result is not None else {"models": {}}

    monkeypatch.setattr(drope_check.measurements.measure, "measure_pair", measure_pair)


def test_overwriting_out_is_said_and_keeps_the_mode(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.json"
    out.write_text("{}\n")
    out.chmod(0o644)
    fake_measurement(monkeypatch, {"models": {}, "run": 2})
    rc, stdout, err = run(capsys, "measure", "--out", out, "--interventions", "none", "--device", "cpu")
    assert rc == 0, err
    assert f"--out {out} exists and will be replaced" in err
    assert f"wrote {out} (replaced the previous file)" in stdout
    assert json.loads(out.read_text()) == {"models": {}, "run": 2}
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_out_that_cannot_be_written_at_the_end_loses_no_run(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def folder_becomes_a_file():  # passes the preflight, fails the final write
        folder.rmdir()
        folder.write_text("not a folder any more")

    fake_measurement(monkeypatch, {"models": {}, "precious": True}, during=folder_becomes_a_file)
    rc, _, err = run(
        capsys, "measure", "--out", folder / "m.json", "--interventions", "none", "--device", "cpu"
    )
    assert_user_error(rc, err, str(folder / "m.json"), "saved to")
    rescue = Path(err.split("saved to ")[1].strip())
    assert json.loads(rescue.read_text()) == {"models": {}, "precious": True}


# --------------------------------------------------------------------------------------------------
# file modes of atomic writes


def _write_cli(path: Path) -> None:
    atomic.atomic_write_json(path, {"a": 1})


def _write_report(path: Path) -> None:
    atomic.atomic_write_bytes(path, b"{}\n")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize(
    "write", [_write_cli, _write_report], ids=["atomic.atomic_write_json", "atomic.atomic_write_bytes"]
)
@pytest.mark.parametrize("before", [None, 0o644, 0o640], ids=["new", "existing-0644", "existing-0640"])
def test_atomic_writes_keep_the_mode_a_plain_write_gives(tmp_path, umask_022, write, before):
    path = tmp_path / "out.json"
    if before is not None:
        path.write_text("old")
        path.chmod(before)
    write(path)
    expected = 0o644 if before is None else before  # new: 0666 minus the umask; existing: its own mode
    assert stat.S_IMODE(path.stat().st_mode) == expected
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


# --------------------------------------------------------------------------------------------------
# texts, devices and option values


def test_missing_wikitext_path_is_named(tmp_path, capsys, no_weights):
    missing = tmp_path / "wiki.test.raw"
    rc, _, err = run(
        capsys, "measure", "--wikitext", missing, "--out", tmp_path / "m.json", "--device", "cpu"
    )
    assert_user_error(rc, err, "--wikitext", str(missing), "does not exist")


def test_missing_wikitext_env_path_is_named(tmp_path, capsys, monkeypatch, no_weights):
    missing = tmp_path / "elsewhere" / "wiki.test.raw"
    monkeypatch.setenv(ENV_WIKITEXT, str(missing))
    rc, _, err = run(capsys, "measure", "--out", tmp_path / "m.json", "--device", "cpu")
    assert_user_error(rc, err, ENV_WIKITEXT, str(missing))


def test_nul_bytes_in_the_text_name_the_file(tmp_path, capsys, no_weights):
    wiki = tmp_path / "wiki.test.raw"
    line = " " + "word " * 30 + "\n"
    wiki.write_text(line * 3 + " bad \x00 byte " + line + line * 30)
    rc, _, err = run(
        capsys,
        "measure",
        "--wikitext",
        wiki,
        "--n-texts",
        "2",
        "--out",
        tmp_path / "m.json",
        "--device",
        "cpu",
        "--interventions",
        "none",
    )
    assert_user_error(rc, err, str(wiki), "NUL", "line 4")


DEVICE_CASES = {
    "device-nonsense": (["--device", "nonsense"], ["--device", "'nonsense'"]),
    "dtype-int8": (["--dtype", "int8"], ["--dtype", "'int8'", "float32"]),
    "n-texts-0": (["--n-texts", "0"], ["--n-texts"]),
    "sink-tau-2": (["--sink-tau", "2"], ["--sink-tau"]),
    "pad-to-short": (["--pad-to", "8"], ["--pad-to"]),
    "interventions": (["--interventions", "qk_disruption:bogus"], ["--interventions", "qk_disruption:bogus"]),
    "pair": (["--pair", "llama3"], ["--pair", "'llama3'", "smollm2-135m"]),
    "rope-without-drope": (["--rope", "x"], ["--rope", "--drope"]),
}


@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_bad_option_value_is_one_sentence_exit_2(tmp_path, capsys, no_weights, case):
    args, names = DEVICE_CASES[case]
    rc, _, err = run(capsys, "measure", *args, "--out", tmp_path / "m.json")
    assert_user_error(rc, err, *names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("args", [["--device", "cuda"], ["--device", "cuda:1"], ["--quantization", "nf4"]])
def test_cuda_options_without_cuda_are_user_errors(tmp_path, capsys, no_weights, args):
    rc, _, err = run(capsys, "measure", *args, "--out", tmp_path / "m.json")
    assert_user_error(rc, err, args[0])


def test_quantization_without_bitsandbytes_is_a_user_error(tmp_path, capsys, monkeypatch, no_weights):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    rc, _, err = run(
        capsys, "measure", "--device", "cuda", "--quantization", "nf4", "--out", tmp_path / "m.json"
    )
    assert_user_error(rc, err, "--quantization nf4", "pip install bitsandbytes")


def test_debug_shows_the_traceback(tmp_path, capsys, no_weights):
    rc, _, err = run(capsys, "measure", "--device", "nonsense", "--out", tmp_path / "m.json", "--debug")
    assert rc == 2
    assert "Traceback" in err and "UserError" in err
    assert err.strip().splitlines()[-1].startswith("drope-check measure: error: --device 'nonsense'")


# --------------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_during_the_run_exits_130_with_one_line_and_no_file(tmp_path, capsys, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    fake_measurement(monkeypatch, during=interrupt)
    rc, _, err = run(
        capsys, "measure", "--out", tmp_path / "m.json", "--interventions", "none", "--device", "cpu"
    )
    assert rc == 130
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_writing_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    out = tmp_path / "m.json"
    out.write_text('{"old": true}\n')

    def interrupted_fsync(_fd):  # the new bytes are in the temporary file, not yet renamed over
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write_json(out, {"new": True})
    assert out.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
