"""Playing with a trained policy: the agent shared by evaluation, recording and the live player."""

from rayapp.play.agent import Agent, FrameStacker

__all__ = ["Agent", "FrameStacker"]
