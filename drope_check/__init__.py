"""drope_check: a pytest reproducibility suite for the claims of "Massive Activations in DroPE".

Packages follow the flow pair -> capture -> metrics -> measurements -> claims -> verdicts -> report
(docs/architecture.md).

Submodules are imported on demand; importing the package downloads nothing and loads no model.
"""

__version__ = "0.1.0"
