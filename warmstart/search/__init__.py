"""Search: spend more compute at test time for better answers (best-of-N, voting, step-level beam,
MCTS, sequential revision), guided by verifiers and reward models. Every strategy returns
episodes (with its statistics in ``info``) and counts the tokens it sampled. Strategies and scorers
are registered plug-ins (``warmstart.registry.SEARCH`` / ``SCORERS``), each strategy with its own
config class."""

from warmstart.search.base import Expander, Partial, SearchResult
from warmstart.search.mcts import MCTS, Node, ReasoningStepEnv, TreeEnv
from warmstart.search.scorers import ConstantScorer, RewardModelScorer, VerifierScorer, make_scorer
from warmstart.search.strategies import (
    BeamConfig,
    BestOfNConfig,
    MCTSConfig,
    ReviseConfig,
    SearchConfig,
    VoteConfig,
    WeightedVoteConfig,
    beam_search,
    best_of_n,
    keep_top_k,
    mcts_search,
    revise,
    run_search,
    search_config,
    vote,
)
