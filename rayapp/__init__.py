"""rayapp: teach agents to play games from pixels, at cluster scale, on Ray.

Record -> stream -> pretrain (behaviour cloning) -> fine-tune (DQN) -> sweep -> play.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
