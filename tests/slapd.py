"""The slapd test bed lives in the package (the demo starts the same server): re-exported here."""

from hubpilot.localldap import (
    EXTRA_SCHEMA,
    LDAPADD,
    LIMITED_PASSWORD,
    MODULE_PATH,
    ROOT_PASSWORD,
    SCHEMA_DIR,
    SCHEMAS,
    SLAPADD,
    SLAPD,
    Slapd,
    free_port,
    people_ldif,
    slapd_server,
    start_slapd,
)

__all__ = [
    "EXTRA_SCHEMA",
    "LDAPADD",
    "LIMITED_PASSWORD",
    "MODULE_PATH",
    "ROOT_PASSWORD",
    "SCHEMAS",
    "SCHEMA_DIR",
    "SLAPADD",
    "SLAPD",
    "Slapd",
    "free_port",
    "people_ldif",
    "slapd_server",
    "start_slapd",
]
