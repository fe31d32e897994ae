"""The report's attention-sink claims: sink rates per layer and on average (97.8% / 95.6%).

Sink score of a head = mean over all query positions (t = 0 included, as upstream) of the attention
to position 0, taken from the exact q/k the model attends with; a head is a sink when its score is
>= 0.3; the rate is the fraction of heads, averaged over sequences. Claimed: the per-layer table
(L0, L1, L2-30, L31), the averages, and that both models' rates are "nearly identical".
"""

from drope_check.pytest_plugin.fixtures import check_claim

CLAIM_FAMILY = "sink"


def test_sink(claim, claim_verdict):
    """A sink rate (one layer, a range of layers, the average, or the models' difference) lies in the band."""
    check_claim(claim_verdict)
