"""The report's functional claims: BOS-MLP ablation and Q/K massive-value disruption.

Claimed: zeroing the BOS token's MLP output at the "spike layer" sends RoPE's perplexity up 1249x
(12766) and leaves DroPE's unchanged (1.00x, 18.5); disrupting massive Q/K values costs RoPE 6.7x
and DroPE 1.29x; hence "only RoPE collapses" and "DroPE is more robust". The claims read the
interventions exactly as upstream defined them (spike layer by the argmax-BOS-ratio rule, Q/K rule
of upstream's code); the principled variants sit next to them in the measurements and the
rationales say where the conclusion depends on the rule.
"""

from drope_check.pytest_plugin.fixtures import check_claim

CLAIM_FAMILY = "intervention"


def test_intervention(claim, claim_verdict):
    """An intervention's perplexity or ratio (or the comparison of both models) lies in the band."""
    check_claim(claim_verdict)
