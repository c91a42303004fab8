"""Learners: each a flat phase (collect -> score -> advantages -> update) calling shared update
functions, with the math from :mod:`warmstart.functional`.

* :mod:`~warmstart.learn.grpo` -- GRPO and its variants; :func:`~warmstart.learn.grpo.grpo_update`
  is the one clipped policy-gradient update of every token learner;
* :mod:`~warmstart.learn.multi_turn` -- multi-turn RL (SCoRe's stages, naive multi-turn RL) and
  SFT on self-generated revisions (STaR, Pair-SFT);
* :mod:`~warmstart.learn.from_search` -- expert iteration and GRPO on search groups;
* :mod:`~warmstart.learn.reward_models` -- ORM / PRM training;
* :mod:`~warmstart.learn.ppo` -- PPO and PDPPO for vector policies;
* :mod:`~warmstart.learn.supervised` -- the supervised update every imitation learner shares.

Debug metrics mean one thing everywhere (token learners average over action tokens, PPO over samples):

* ``approx_kl``: k3 estimate of KL(behaviour || current) from the behaviour samples,
  ``(r - 1) - log r`` with ``r = pi / pi_behaviour`` (CleanRL's); GRPO averages it over the step's
  updates, PPO reports the last minibatch's, as CleanRL does;
* ``clipfrac``: share of samples whose ratio left ``[1 - eps_low, 1 + eps_high]`` (CleanRL's);
  ``clip_active`` (token learners) is the different share whose clipped branch was the one taken
  (ratio out of the band on the side the advantage pushes: those get no gradient);
* ``kl``: the estimator the KL *penalty* uses (``kl_estimator``, k3 by default) of the current policy
  against the frozen reference, not against the behaviour policy.
"""
