"""The deployment layer: what starts and adapts the real processes of a federation.

:mod:`~fedguard.deploy.certs` (the federation CA, server certificate and node keys),
:mod:`~fedguard.deploy.roster` (a node's out-of-band roster of node keys),
:mod:`~fedguard.deploy.procs` (starting and stopping processes by PID),
:mod:`~fedguard.deploy.demo` (``fedguard demo``) and :mod:`fedguard.deploy.flower` (every
workaround fedguard applies to Flower, its version pin, and all parsing of Flower's
command-line and log text). Nothing below ``fedguard.deploy`` is imported by
``fedguard.privacy`` or the simulations.
"""
