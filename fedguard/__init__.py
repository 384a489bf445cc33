"""fedguard: privacy-preserving federated training.

One import namespace. Subpackages:

- ``fedguard.task``: what every part shares: data sets, partitioners, models,
  train/evaluate loops, metrics.
- ``fedguard.privacy``: DP-SGD (Opacus), accountants and their durable state.
  Never imports Flower.
- ``fedguard.client`` / ``fedguard.server``: the Flower ClientApp and ServerApp.
- ``fedguard.simulations``: many virtual clients on one machine.
- ``fedguard.config`` / ``fedguard.cli``: configuration and the ``fedguard`` command.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
