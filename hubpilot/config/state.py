from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator

from hubpilot.config.base import FROM_FILE_FOLDER, PathSetting, Section, check_account_key


class StateSettings(Section):
    """Where hubpilot keeps its locks, audit log and documents."""

    kind: Literal["sqlite", "azure"] = Field("sqlite", description="sqlite (local) or azure (Tables + Blobs).")
    sqlite_path: Annotated[str, PathSetting(sqlite=True)] = Field(
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
        None, description="Storage account name for managed-identity access (kind=azure)."
    )
    azure_endpoint_suffix: str = Field(
        "core.windows.net", description="Storage endpoint suffix (sovereign clouds differ)."
    )
    azure_table_prefix: str = Field("hubpilot", description="Prefix of the tables hubpilot creates.")
    azure_container: str = Field("hubpilot-state", description="Blob container for documents.")
    run_retention_days: int = Field(
        30, ge=0, le=3650,
        description="Delete run documents (GET /runs/{id}) older than this, about once a day; 0 keeps them. "
                    "The audit log keeps every run.",
    )

    @field_validator("sqlite_path")
    @classmethod
    def _a_file(cls, v: str) -> str:
        # SQLite opens "" as a temporary database deleted when the run ends: every run would start
        # on an empty store, forgetting the managed users, the removal window and the approvals
        if not v:
            raise ValueError("is empty: SQLite would keep the state in a temporary database that each run "
                             "starts afresh; set the state file's path, or unset the setting for the default "
                             f"{cls.model_fields['sqlite_path'].default!r}")
        return v

    @field_validator("azure_connection_string")
    @classmethod
    def _account_key(cls, v: SecretStr | None) -> SecretStr | None:
        return check_account_key(v)
