"""berthd, the control plane: desired state (specs, counts) -> observed state (containers).

The root holds the composition only: `main` (the `berthd` command), `berthd` (the `Berthd`
object: lifetimes, wiring, signals) and `observability` (the glue that reads across parts
for the metrics sampler and the Prometheus snapshot). Every part lives in a sub-package whose
`__init__` says what it owns and what it may import; no sub-package imports a root module
(this file's `__version__` aside). `tests/unit/test_layering.py` checks the rules.
"""

__version__ = "0.1.0"
