"""The report's Methods statements, judged against what the author's code did.

"Entropy: Normalized entropy of singular values", "Replace massive Q/K values (>10 std) with mean",
"Perplexity: WikiText-2 samples", "This produces valid attention weights", "BOS-MLP ablation results
confirmed with independent PPL measurements", the sink threshold and the ablation's definition are
claims too. They are about the author's code, not about the models, so only the author's files judge
them: each protocol's ``method`` facts in ``drope_check/sources/upstream_sources.toml`` (imported as
``provenance.method.<fact>``), compared with the report's statement (an ``equals`` band). A statement
the code contradicts is a strict xfail that turns red if the facts ever agree; one no committed run
supports is prose only.
"""

from drope_check.pytest_plugin.fixtures import check_claim

CLAIM_FAMILY = "method"


def test_method(claim, claim_verdict):
    """A Methods statement matches what the author's code did (per the author's files)."""
    check_claim(claim_verdict)
