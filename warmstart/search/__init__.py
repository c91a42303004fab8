"""Search: spend more compute at test time for better answers (best-of-N, voting, step-level beam,
MCTS, sequential revision), guided by verifiers and reward models. Every strategy returns
episodes (with its statistics in ``info``) and counts the tokens it sampled."""

from warmstart.search.base import Expander, Partial, SearchResult
from warmstart.search.mcts import MCTS, Node, ReasoningStepEnv, TreeEnv
from warmstart.search.scorers import ConstantScorer, RewardModelScorer, VerifierScorer, make_scorer
from warmstart.search.strategies import (
    STRATEGIES,
    SearchConfig,
    beam_search,
    best_of_n,
    keep_top_k,
    knobs_for_budget,
    mcts_search,
    revise,
    run_search,
    vote,
)
