"""Microsoft Graph webhook endpoints of the admin API (owned by the Entra work)."""

from fastapi import APIRouter

router = APIRouter()
