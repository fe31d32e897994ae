"""One pinned GPU stack, and one name for each optional extra, everywhere a user or CI reads it.

What is claimed: every extra that the README, tox.ini, ci/setup.sh, the workflows or the constraints files
name (``.[test,gpu]``, ``extras = test, gpu``, "the extra [gpu]", "the `gpu` extra") is an extra of
pyproject.toml; the 4-bit / device-map extra is called ``gpu`` (bitsandbytes + accelerate) and nothing
calls it anything else; ``ci/constraints-gpu.txt`` pins torch, transformers, bitsandbytes and accelerate
exactly, at versions the ``gpu`` extra accepts, with the same torch and transformers releases as the CPU
pins; and ``ci/setup.sh --gpu``, ``tox -e gpu`` / ``tox -e audit-gpu`` and the GPU workflows install
through it. (Which versions exist and work together was checked against PyPI when they were pinned;
see the comments in ci/constraints-gpu.txt.)
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
#: Files whose text names extras, as users and CI read them.
MENTIONING = [
    ROOT / "README.md",
    ROOT / "tox.ini",
    ROOT / "ci" / "setup.sh",
    ROOT / "ci" / "constraints-gpu.txt",
    ROOT / "ci" / "constraints-cpu.txt",
    *WORKFLOWS,
    *sorted((ROOT / "docs").glob("*.md")),
]
#: How an extra is named in prose and commands.
PATTERNS = [
    re.compile(r"\.\[([a-z0-9_,\s-]+)\]"),  # pip install -e '.[test,gpu]'
    re.compile(r"^extras\s*=\s*([a-z0-9_, -]+)$", re.MULTILINE),  # tox.ini
    re.compile(r'extras="(?:\$\{extras\},)?([a-z0-9_-]+)"'),  # ci/setup.sh
    re.compile(r"\bextra \[([a-z0-9_-]+)\]"),  # "the extra [gpu]"
    re.compile(r"\bextra \*{0,2}`([a-z0-9_-]+)`"),  # "the extra **`gpu`**"
    re.compile(r"`([a-z0-9_-]+)` extra\b"),  # "the `gpu` extra"
]


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def mentioned_extras() -> dict[str, set[str]]:
    """Extra name -> the files naming it."""
    found: dict[str, set[str]] = {}
    for path in MENTIONING:
        text = path.read_text(encoding="utf-8")
        for pattern in PATTERNS:
            for match in pattern.finditer(text):
                for name in re.split(r"[,\s]+", match.group(1).strip()):
                    if name:
                        found.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return found


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            out[req.name] = spec.version
    return out


def test_every_mentioned_extra_exists_in_pyproject():
    known = set(extras())
    found = mentioned_extras()
    assert {"gpu", "gemma", "test"} <= set(found), f"the patterns no longer see the extras: {sorted(found)}"
    unknown = {name: sorted(files) for name, files in found.items() if name not in known}
    assert not unknown, f"extras named but not defined in pyproject.toml: {unknown}"


def test_the_4bit_extra_is_called_gpu_everywhere():
    gpu = {Requirement(r).name for r in extras()["gpu"]}
    assert gpu == {"bitsandbytes", "accelerate"}
    assert "quant" not in extras()
    found = mentioned_extras()
    assert {"README.md", "tox.ini", "ci/setup.sh"} <= found["gpu"], found["gpu"]
    assert "quant" not in found


def test_gpu_constraints_pin_the_stack_the_extra_accepts():
    gpu, cpu = pins(ROOT / "ci" / "constraints-gpu.txt"), pins(ROOT / "ci" / "constraints-cpu.txt")
    assert set(gpu) == {"torch", "transformers", "bitsandbytes", "accelerate"}
    assert gpu["transformers"] == cpu["transformers"]
    assert (
        Version(gpu["torch"]).public == Version(cpu["torch"]).public
    )  # the CUDA build of the CPU-tested release
    for line in extras()["gpu"]:
        req = Requirement(line)
        assert req.specifier.contains(gpu[req.name]), (
            f"the gpu extra {line!r} refuses the pinned {gpu[req.name]}"
        )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.name in gpu:
            assert req.specifier.contains(gpu[req.name]), f"{line!r} refuses the pinned {gpu[req.name]}"


def test_setup_tox_and_workflows_install_through_the_gpu_constraints():
    setup = (ROOT / "ci" / "setup.sh").read_text()
    assert "-c ci/constraints-gpu.txt" in setup and "--gpu)" in setup and 'extras="${extras},gpu"' in setup
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    for env in ("testenv:gpu", "testenv:audit-gpu"):
        assert tox[env]["deps"].strip() == "-c ci/constraints-gpu.txt", env
        assert tox[env]["constrain_package_deps"].strip() == "true", env
        assert [e.strip() for e in tox[env]["extras"].split(",")] == ["test", "gpu"], env
    for workflow in WORKFLOWS:
        text = workflow.read_text()
        if "gpu" in workflow.name:
            assert re.search(r"bash ci/setup\.sh (--gpu|\$\{\{ matrix\.setup \}\})", text), workflow.name
            assert "pip install --quiet bitsandbytes" not in text, (
                f"{workflow.name} installs bitsandbytes unpinned"
            )


@pytest.mark.parametrize("option", ["--gpu", "--with-gemma --gpu"])
def test_setup_accepts_its_options_and_refuses_cpu_torch_with_gpu(option, tmp_path):
    """Parse only: DROPE_CHECK_CPU_TORCH=1 with --gpu, and an unknown option, are refused before anything is
    installed (a copy of the script runs in a temporary folder, so a regression can never touch a real .venv)."""
    import shutil
    import subprocess

    (tmp_path / "ci").mkdir()
    script = tmp_path / "ci" / "setup.sh"
    shutil.copy(ROOT / "ci" / "setup.sh", script)
    proc = subprocess.run(
        ["bash", str(script), *option.split()],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DROPE_CHECK_CPU_TORCH": "1"},
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2 and "DROPE_CHECK_CPU_TORCH=1" in proc.stderr
    proc = subprocess.run(
        ["bash", str(script), "--quant"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2 and "--with-gemma and --gpu" in proc.stderr
