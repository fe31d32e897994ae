"""The report's perplexity claims: baseline WikiText-2 perplexity of each model (10.2 / 18.6).

Each test judges one claim of ``expected/<pair>.toml`` against the session's measurements (measured
once per pair, or read from ``--measurements``); the band, its rationale and the provenance of the
report's number live in the claim file, and the verdict goes to the claims report. On the report's
pair the values are the report's own; on the embedded pair they are regression goldens of this suite.
"""

from drope_check.pytest_plugin.fixtures import check_claim

CLAIM_FAMILY = "perplexity"


def test_perplexity(claim, claim_verdict):
    """Baseline perplexity on upstream's WikiText-2 lines protocol lies in the claim's band."""
    check_claim(claim_verdict)
