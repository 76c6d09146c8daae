"""The live player: capture -> preprocess -> inference -> input, with hot-reloaded weights (issue 12).

The agent it drives is `rayapp.models.agent.Agent`; frame preprocessing is `rayapp.frames`.
"""

__all__: list[str] = []
