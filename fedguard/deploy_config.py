"""Deployment configuration's front door: ``federation.toml`` (operator) and ``node.toml``
(hospital/bank), and the keys through which the launchers hand their paths to the apps.

Each file has its own module, its sections, defaults and checks side by side:
:mod:`fedguard.federation_config` and :mod:`fedguard.node_config`, both read with the
helpers of :mod:`fedguard.deploy_toml`. Every error is one line naming the file, the
``section.key``, what is allowed and the value received. Relative paths are resolved
against the config file's folder, so a config can be moved with its certificates.
"""

from __future__ import annotations

from fedguard.federation_config import FederationConfig, load_federation_config
from fedguard.node_config import NodeConfig, load_node_config

__all__ = [
    "CONFIG_KEY",
    "NODE_CONFIG_KEY",
    "FederationConfig",
    "NodeConfig",
    "load_federation_config",
    "load_node_config",
]

CONFIG_KEY = "config-path"
"""The run-config key through which `fedguard server` gives its ServerApp federation.toml."""

NODE_CONFIG_KEY = "fedguard-node-config"
"""The --node-config key through which `fedguard client` gives its ClientApp node.toml.

Both live here, not beside the Flower apps, so that the launchers (which only start
processes) need not import torch and Flower to name them."""
