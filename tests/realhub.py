"""The real-hub test bed lives in the package (the demo starts the same hub): re-exported here."""

from hubpilot.localhub import (
    PASSWORD,
    PROJECT_ROOT,
    RealHub,
    ServiceSpec,
    drop_one_services,
    free_port,
    start_hub,
)

__all__ = ["PASSWORD", "PROJECT_ROOT", "RealHub", "ServiceSpec", "drop_one_services", "free_port", "start_hub"]
