"""Ray Train loops: behaviour cloning (`bc` the driver, `bc_loop` the per-worker loop, `callback`
the controller's report handler)."""

__all__ = ["bc", "bc_loop", "callback"]
