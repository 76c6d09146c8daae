"""Ray Train loops: behaviour cloning (`bc`), and the metrics they write."""

__all__ = ["bc", "metrics"]
