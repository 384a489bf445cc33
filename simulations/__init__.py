"""Virtual clients and the engines that run them."""

__all__: list[str] = []
