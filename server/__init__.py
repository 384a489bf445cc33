"""The operator side: fedguard's Flower ServerApp."""

__all__: list[str] = []
