"""drope_check: a pytest reproducibility suite for the claims of "Massive Activations in DroPE".

Submodules are imported on demand; importing the package downloads nothing and loads no model.
"""

__version__ = "0.1.0"
