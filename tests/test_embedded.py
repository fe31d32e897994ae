"""The registry of offline models (drope_check.models.embedded): names, locating, clear errors."""

from __future__ import annotations

import pytest

from drope_check.models.embedded import EmbeddedModel, EmbeddedUnavailable, is_embedded
from drope_check.models.pairs import EMBEDDED_MODELS, PAIRS, embedded_model


def test_sources_name_embedded_models():
    assert is_embedded("embedded") and is_embedded("embedded:gemma3-270m")
    assert not is_embedded("embeddedness/model") and not is_embedded("/tmp/embedded")
    assert embedded_model("embedded") is EMBEDDED_MODELS["smollm2-135m"]
    assert embedded_model("embedded:gemma3-270m") is EMBEDDED_MODELS["gemma3-270m"]
    with pytest.raises(
        KeyError, match=r"unknown embedded model 'embedded:nope'; known: gemma3-270m, smollm2-135m"
    ):
        embedded_model("embedded:nope")


def test_gemma_pair_is_nope_zeroshot_from_the_gemma_package():
    pair = PAIRS["gemma3-270m"]
    assert pair.rope.source == pair.drope.source == "embedded:gemma3-270m"
    assert (pair.rope.variant, pair.drope.variant) == ("rope", "nope-zeroshot")
    assert pair.bos_token == "<bos>" and not pair.needs_gpu
    gemma = EMBEDDED_MODELS["gemma3-270m"]
    assert gemma.assembled and "Gemma Terms of Use" in gemma.licence and "[gemma]" in gemma.install


def test_missing_package_is_named_with_the_install_command():
    ghost = EmbeddedModel(
        "ghost", "no_such_package_for_drope_check", "g.gguf", "pip install ghost", "x/ghost", "none"
    )
    for call in (ghost.check_installed, ghost.gguf_path):
        with pytest.raises(
            EmbeddedUnavailable,
            match=r"needs the 'no_such_package_for_drope_check' package: `pip install ghost`",
        ):
            call()
