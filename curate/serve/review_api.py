"""The review API: faces to decide on, decisions, and the filter run in the background."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api")
