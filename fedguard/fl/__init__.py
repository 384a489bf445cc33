"""What a round means, shared by every engine: the round loop and a node's local round.

``fedguard.fl`` sits between the privacy/task layers and the engines that run rounds
(the deployed client and server, the simulations). It never imports Flower, nor
``fedguard.client``, ``fedguard.server`` or ``fedguard.simulations``
(``tests/test_layers.py``).

- :mod:`fedguard.fl.loop`: ``run_rounds``, the one round loop, and ``WeightedSum``.
- :mod:`fedguard.fl.data`: a simulation's data set, partition and round-0 model, the
  same for every engine.
- :mod:`fedguard.fl.local`: ``LocalTrainer``, a node's local round (budget check, DP
  training, accounting).
"""

__all__: list[str] = []
