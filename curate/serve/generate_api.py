"""The generate API: a run's vocabulary, directions and snapshots, and generation through one worker."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api")
