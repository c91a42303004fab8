"""warmstart: reinforcement learning from a warm start (init -> search -> reward -> learn)."""

__version__ = "0.1.0"

from warmstart.episode import Episode, Transitions, collate  # noqa: E402,F401
