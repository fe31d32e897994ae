"""The report's phase-metric claims (Queipo-de-Llano et al.): BOS spike layer, peak BOS norm and its
layer, the compression valley (minimum matrix entropy) and its layer, and "the valley entropy is 11x
higher in DroPE". Layer l is the output of decoder block l; entropy is the raw (nats) entropy of the
uncentred residual spectrum, as upstream's code computed it.
"""

from drope_check.pytest_plugin.fixtures import check_claim

CLAIM_FAMILY = "phase"


def test_phase(claim, claim_verdict):
    """A phase metric (value or layer index, or the models' ratio) lies in the band."""
    check_claim(claim_verdict)
