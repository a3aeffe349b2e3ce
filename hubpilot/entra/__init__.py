"""Entra ID (Microsoft Graph) as directory: the pure parts.

``delta`` applies delta-query rounds to the stored membership and expands nested groups;
``directory`` is the :class:`~hubpilot.ports.directory.Directory` that drives those rounds
through a :class:`~hubpilot.entra.directory.GraphReader` and keeps its state in the state store;
``notifications`` validates webhook bodies; ``subscriptions`` plans and applies Graph
subscriptions as a capability of the one loop. Nothing here imports an SDK.
"""
