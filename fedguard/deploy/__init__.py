"""The deployment layer: what starts and adapts the real processes of a federation.

Only :mod:`fedguard.deploy.flower` lives here so far (every workaround fedguard applies to
Flower, its version pin, and all parsing of Flower's command-line and log text); the
certificates and process helpers are still ``fedguard.certs`` and ``fedguard._procs``.
Nothing below ``fedguard.deploy`` is imported by ``fedguard.privacy`` or the simulations.
"""
