"""Scale endpoints of the admin API (owned by the scale work)."""

from fastapi import APIRouter

router = APIRouter()
