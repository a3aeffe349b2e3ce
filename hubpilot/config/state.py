from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from hubpilot.config.base import FROM_FILE_FOLDER, HomePath, PathSetting, Section, check_account_key
from hubpilot.ports.store import AZURE_ACCOUNT, AZURE_CONTAINER, AZURE_TABLE_PREFIX


class StateSettings(Section):
    """Where hubpilot keeps its locks, audit log and documents."""

    kind: Literal["sqlite", "azure"] = Field("sqlite", description="sqlite (local) or azure (Tables + Blobs).")
    sqlite_path: Annotated[str, PathSetting(sqlite=True), HomePath] = Field(
        "hubpilot-state.sqlite3",
        description="SQLite file for kind=sqlite. " + FROM_FILE_FOLDER + " The default is in the working "
        "directory: set it in the settings file to keep the state beside that file whatever the working directory "
        "(unset, a run from a folder without a state file is refused when the settings file's folder has one).")
    azure_connection_string: SecretStr | None = Field(
        None, description="Azure Storage connection string (kind=azure); or use azure_account_name. "
        "One whose AccountKey is empty or not base64 is refused, without showing it. A store error that quotes "
        "a request's URL shows its shared access signature (sig=) as (hidden)."
    )
    azure_account_name: str | None = Field(
        None, description="Storage account name for managed-identity access (kind=azure): 3-24 lowercase "
        "letters and digits."
    )
    azure_endpoint_suffix: str = Field(
        "core.windows.net", description="Storage endpoint suffix (sovereign clouds differ)."
    )
    azure_table_prefix: str = Field("hubpilot", description="Prefix of the tables hubpilot creates "
                                    "(<prefix>locks, <prefix>audit): 1-57 letters and digits, starting with a letter.")
    azure_container: str = Field("hubpilot-state", description="Blob container for documents: 3-63 lowercase "
                                 "letters, digits and single hyphens, starting and ending with a letter or digit.")
    run_retention_days: int = Field(
        30, ge=0, le=3650,
        description="Delete run documents (GET /runs/{id}), and refused plans not refused again, older than this, "
                    "about once a day; 0 keeps them. The audit log keeps every run and every refusal.",
    )

    @field_validator("sqlite_path")
    @classmethod
    def _a_file(cls, v: str) -> str:
        # SQLite opens "" as a temporary database deleted when the run ends: every run would start
        # on an empty store, forgetting the managed users, the removal window and the approvals
        if not v.strip():
            raise ValueError("is empty: SQLite would keep the state in a temporary database that each run "
                             "starts afresh; set the state file's path, or unset the setting for the default "
                             f"{cls.model_fields['sqlite_path'].default!r}")
        return v

    @field_validator("azure_endpoint_suffix")
    @classmethod
    def _suffix(cls, v: str) -> str:
        # checked only when the store was built: every command failed then, naming no setting
        bare = v.strip().strip(".")
        if not bare or any(c in bare for c in "/: ") or "." not in bare:
            raise ValueError("is no DNS suffix: write the storage endpoint suffix alone, not a URL, e.g. "
                             "'core.windows.net' (Azure China: 'core.chinacloudapi.cn', Azure US Government: "
                             "'core.usgovcloudapi.net')")
        return v

    @field_validator("azure_connection_string")
    @classmethod
    def _account_key(cls, v: SecretStr | None) -> SecretStr | None:
        return check_account_key(v)

    # names Azure Storage refuses: every command would fail building the store, naming no setting
    @field_validator("azure_table_prefix")
    @classmethod
    def _table_prefix(cls, v: str) -> str:
        if not AZURE_TABLE_PREFIX.fullmatch(v):
            raise ValueError("is no prefix of an Azure table name: use 1-57 letters and digits, starting with a "
                             "letter (no '-' or '_'), e.g. 'hubpilot'")
        return v

    @field_validator("azure_container")
    @classmethod
    def _container(cls, v: str) -> str:
        if not AZURE_CONTAINER.fullmatch(v):
            raise ValueError("is no Azure blob container name: use 3-63 lowercase letters, digits and single "
                             "hyphens, starting and ending with a letter or digit, e.g. 'hubpilot-state'")
        return v

    @field_validator("azure_account_name")
    @classmethod
    def _account_name(cls, v: str | None) -> str | None:
        # spaces or a line break around it, kept when copied: the store's host was looked up with them
        v = (v.strip() or None) if v is not None else None
        if v and not AZURE_ACCOUNT.fullmatch(v):
            raise ValueError("is no storage account name: use its 3-24 lowercase letters and digits, e.g. "
                             "'sthubpilot1' (the account's name, not its URL)")
        return v

    @model_validator(mode="after")
    def _azure_account(self) -> StateSettings:
        connection = self.azure_connection_string.get_secret_value() if self.azure_connection_string else ""
        if self.kind == "azure" and not connection.strip() and not (self.azure_account_name or "").strip():
            raise ValueError("state.kind is 'azure' but neither state.azure_connection_string nor "
                             "state.azure_account_name is set: set the storage account's name (reached with the "
                             "app's identity; the Bicep deployment sets HUBPILOT_STATE__AZURE_ACCOUNT_NAME) or a "
                             "connection string")
        return self
