"""Monte-Carlo tree search with PUCT, generic over states, batched over trees and leaves.

The tree knows nothing about language: a :class:`TreeEnv` says how to ``expand`` states (children
with prior probabilities), how to ``evaluate`` them (a value in [0, 1]) and which are terminal.
Reasoning steps (:class:`ReasoningStepEnv`) are one such env; ProMed's question trees are another.

Every node is evaluated when it is created, so each simulation is AlphaZero's loop with the
evaluation moved one level down: *select* by PUCT from the root to a leaf (unvisited children count
with their own evaluated value, a first-play estimate), *expand* the leaf (its children get priors
and values), *back up* the leaf's value along the path. A wave selects up to ``leaves_per_tree``
leaves in every tree (virtual visits push later selections apart), then expands all of them in
ONE ``env.expand`` call and evaluates all new children in ONE ``env.evaluate`` call -- many
expansions per forward pass.

    PUCT(s, a) = Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

S = TypeVar("S")


class TreeEnv(Protocol[S]):
    def expand(self, states: list[S]) -> list[list[tuple[Any, float, S]]]:
        """For each state, its children as (action, prior, child state); priors need not sum to 1."""

    def evaluate(self, states: list[S]) -> list[float]:
        """A value in [0, 1] for each state (terminal ones included)."""

    def is_terminal(self, state: S) -> bool: ...


@dataclass(eq=False)
class Node(Generic[S]):
    state: S
    parent: "Node | None" = None
    action: Any = None
    prior: float = 1.0
    value: float = 0.0  # the env's evaluation at creation
    depth: int = 0
    terminal: bool = False
    children: list["Node"] = field(default_factory=list)
    expanded: bool = False
    visits: int = 0
    value_sum: float = 0.0
    virtual: int = 0
    exhausted: bool = False  # terminal, or every child is (and it cannot widen): nothing left to expand below
    can_widen: bool = True  # with widening: a re-expansion may still add new children

    @property
    def q(self) -> float:
        """Mean backed-up value; the node's own evaluation until it is visited."""
        n = self.visits + self.virtual
        return self.value_sum / n if n else self.value


def puct_child(node: Node, c_puct: float) -> Node:
    n_parent = node.visits + node.virtual
    total_prior = sum(c.prior for c in node.children) or 1.0
    best, best_score = None, -math.inf
    open_ = [c for c in node.children if not c.exhausted] or node.children
    for c in open_:
        u = c_puct * (c.prior / total_prior) * math.sqrt(n_parent + 1) / (1 + c.visits + c.virtual)
        s = c.q + u
        if s > best_score:
            best, best_score = c, s
    return best


class MCTS:
    """Batched PUCT search over any :class:`TreeEnv`.

    ``simulations`` per tree; ``leaves_per_tree`` leaves selected per tree per wave (1 = sequential
    MCTS; more = fewer, larger batches); ``max_depth`` nodes deeper than this are not expanded;
    ``stop(tree_index)`` may end a tree early (e.g. its token budget is spent); with ``stop`` set, a
    tree whose every leaf is terminal also stops (otherwise it keeps refining its visit counts).

    ``widen``: for envs whose actions are *sampled* (reasoning steps), a node whose children are all
    fully explored is expanded again, adding the newly sampled actions it has not seen (progressive
    widening on demand); a re-sampled action adds its prior to its child's, so priors stay
    proportional to how often each action was sampled. Without it, a root whose few sampled steps
    all happened to be final answers would end the search however much budget is left. A
    re-expansion that adds nothing marks the node as exhausted, so finite action sets still end.
    """

    def __init__(self, env: TreeEnv, simulations: int = 32, c_puct: float = 1.5, leaves_per_tree: int = 4,
                 max_depth: int | None = None, stop: Callable[[int], bool] | None = None, widen: bool = False):
        self.env, self.simulations, self.c_puct = env, simulations, c_puct
        self.leaves_per_tree, self.max_depth, self.stop = max(1, leaves_per_tree), max_depth, stop
        self.widen = widen
        self.expansions = 0
        self.evaluations = 0
        self.waves = 0
        self.time_s = 0.0

    def _within_depth(self, node: Node) -> bool:
        return self.max_depth is None or node.depth < self.max_depth

    def _widenable(self, node: Node) -> bool:
        return (self.widen and node.expanded and node.can_widen and not node.terminal
                and all(c.exhausted for c in node.children) and self._within_depth(node))

    def _select(self, root: Node) -> tuple[Node, list[Node]]:
        node, path = root, [root]
        while node.expanded and node.children and not node.terminal and not self._widenable(node):
            node = puct_child(node, self.c_puct)
            path.append(node)
        for n in path:  # virtual visit: the next selection in this wave is pushed elsewhere
            n.virtual += 1
        return node, path

    def _expandable(self, node: Node) -> bool:
        return (not node.expanded and not node.terminal and self._within_depth(node)) or self._widenable(node)

    def search(self, root_states: list) -> list[Node]:
        t0 = time.time()
        env = self.env
        roots = [Node(s, terminal=env.is_terminal(s), exhausted=env.is_terminal(s)) for s in root_states]
        for r, v in zip(roots, env.evaluate(root_states)):
            r.value = v
        self.evaluations += len(roots)
        done_sims = [0] * len(roots)
        while True:
            picks: list[tuple[int, Node, list[Node]]] = []
            for t, root in enumerate(roots):
                # a budgeted tree with nothing left to expand can spend no more: stop it too
                if self.stop is not None and (root.exhausted or self.stop(t)):
                    continue
                picked: set[int] = set()
                for _ in range(min(self.leaves_per_tree, self.simulations - done_sims[t])):
                    leaf, path = self._select(root)
                    if id(leaf) in picked and self._expandable(leaf):
                        # virtual visits could not push this selection elsewhere (e.g. a node with a
                        # single child): a second pick of a leaf to expand would add no node but
                        # spend a simulation; leave it to the next wave
                        for n in path:
                            n.virtual -= 1
                        break
                    picked.add(id(leaf))
                    picks.append((t, leaf, path))
                    done_sims[t] += 1
            if not picks:
                break
            self.waves += 1
            # expand every distinct, expandable leaf of this wave in one call
            todo, seen = [], set()
            for _, leaf, _ in picks:
                if self._expandable(leaf) and id(leaf) not in seen:
                    seen.add(id(leaf))
                    todo.append(leaf)
            if todo:
                kids_per_leaf = env.expand([n.state for n in todo])
                self.expansions += len(todo)
                new = []
                for leaf, kids in zip(todo, kids_per_leaf):
                    widening = leaf.expanded
                    leaf.expanded = True
                    if widening:  # a seen action adds its prior (its samples) to its child; new ones join
                        by_action = {c.action: c for c in leaf.children}
                        for action, prior, _ in kids:
                            if action in by_action:
                                by_action[action].prior += prior
                        kids = [k for k in kids if k[0] not in by_action]
                        leaf.can_widen = bool(kids)
                    for action, prior, st in kids:
                        term = env.is_terminal(st)
                        c = Node(st, parent=leaf, action=action, prior=prior, depth=leaf.depth + 1,
                                 terminal=term, exhausted=term)
                        leaf.children.append(c)
                        new.append(c)
                if new:
                    for c, v in zip(new, env.evaluate([c.state for c in new])):
                        c.value = v
                    self.evaluations += len(new)
            for _, leaf, path in picks:
                for n in path:
                    n.virtual -= 1
                    n.visits += 1
                    n.value_sum += leaf.value
                for n in reversed(path):  # exhaustion propagates upwards
                    n.exhausted = n.terminal or (
                        (n.expanded or (self.max_depth is not None and n.depth >= self.max_depth))
                        and all(c.exhausted for c in n.children) and not self._widenable(n))
        self.time_s += time.time() - t0
        return roots


# ------------------------------------------------------------------------------------ tree queries


def iter_nodes(root: Node):
    stack = [root]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children)


def most_visited_path(root: Node) -> list[Node]:
    """Root to leaf, following the most-visited child (ties: higher Q)."""
    path = [root]
    node = root
    while node.children:
        node = max(node.children, key=lambda c: (c.visits, c.q))
        path.append(node)
    return path


def best_action(root: Node):
    """The root action AlphaZero plays: the most-visited child's."""
    return max(root.children, key=lambda c: (c.visits, c.q)).action


def tree_stats(root: Node) -> dict:
    nodes = list(iter_nodes(root))
    return {
        "nodes": len(nodes),
        "expanded": sum(n.expanded for n in nodes),
        "terminal": sum(n.terminal for n in nodes),
        "depth": max(n.depth for n in nodes),
        "root_visits": root.visits,
        "exhausted": root.exhausted,
        "root_value": root.q,
        "root_children": [{"visits": c.visits, "q": round(c.q, 4), "prior": round(c.prior, 4)} for c in root.children],
    }


# ------------------------------------------------------------------------------ reasoning steps


class ReasoningStepEnv:
    """States are :class:`~warmstart.search.base.Partial` solutions; an action is one reasoning
    step (text up to the step separator). ``expand`` samples ``width`` steps per state in one
    batched call and merges identical ones (prior = how many of the samples it was, which PUCT
    normalises and a vote over answers uses as the node's weight); past ``max_depth - 1``
    steps a child is sampled to the end instead. ``evaluate`` asks the scorer (a PRM on prefixes,
    an ORM, ...) or, with ``value='rollout'``, completes each state with the policy and scores the
    completion (``rollout_scorer``, default the same scorer)."""

    def __init__(self, expander, scorer, width: int = 4, max_depth: int = 12, value: str = "scorer",
                 rollout_scorer=None):
        self.x, self.scorer, self.width, self.max_depth = expander, scorer, width, max_depth
        self.value, self.rollout_scorer = value, rollout_scorer or scorer

    def is_terminal(self, state) -> bool:
        return state.done

    def expand(self, states):
        full = [s.depth + 1 >= self.max_depth for s in states]
        out: list = [None] * len(states)
        for flag in (False, True):
            idx = [i for i, f in enumerate(full) if f == flag]
            if not idx:
                continue
            kids = self.x.expand([states[i] for i in idx], self.width, full=flag)
            for i, ks in zip(idx, kids):
                merged: dict[tuple, list] = {}
                for k in ks:
                    step = k.ids[len(states[i].ids):]
                    if step in merged:
                        merged[step][1] += 1.0
                    else:
                        merged[step] = [step, 1.0, k]
                out[i] = [(a, n, k) for a, n, k in merged.values()]
        return out

    def evaluate(self, states):
        probs = [self.x.problems[s.problem] for s in states]
        if self.value == "rollout":
            finished = self.x.complete(list(states))
            return self.rollout_scorer(probs, [self.x.text(s) for s in finished])
        return self.scorer(probs, [self.x.text(s) for s in states])
