"""berthd, the control plane: desired state (specs, counts) -> observed state (containers)."""

__version__ = "0.1.0"
