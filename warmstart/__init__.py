"""warmstart: reinforcement learning from a warm start (init -> search -> reward -> learn).

Importing the package registers its Gymnasium environments (``warmstart/LotSizing-v0``), as
``import minigrid`` registers its own: ``gymnasium.make("warmstart/LotSizing-v0")`` then works.
"""

__version__ = "0.1.0"

from warmstart.episode import Episode, Transitions, collate  # noqa: E402,F401
from warmstart.tasks import lotsizing as _lotsizing  # noqa: E402,F401  (registers warmstart/LotSizing-v0)
