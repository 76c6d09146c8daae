"""Ray Tune sweeps over behaviour-cloning and DQN hyperparameters."""

__all__ = ["sweep"]
