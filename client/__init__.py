"""The node: local DP training within its own budget, and the Flower ClientApp."""

__all__: list[str] = []
