from __future__ import annotations

from pydantic import Field

from hubpilot.config.base import Section


class EntraSettings(Section):
    """Microsoft Entra ID through Microsoft Graph. (Filled in by the Entra work.)"""

    graph_base_url: str = Field(
        "https://graph.microsoft.com/v1.0", description="Graph endpoint (sovereign clouds use other hosts)."
    )
    username_attribute: str = Field("userPrincipalName", description="User attribute used as hub username.")
