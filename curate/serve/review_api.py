"""The review API: faces to decide on, decisions, and the filter run in the background.

Faces and images are looked up by id in the manifests (ids checked by pattern); no name a client sends
ever becomes a path. A decision is answered only once `review.decide` has it on disk.
"""

from __future__ import annotations

import io
import os
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from curate import review
from curate.errors import InvalidArgument
from curate.manifest import REVIEW
from curate.serve.faces import REASONS, SORTS, FaceTable, details, summary
from curate.serve.jobs import FilterJob, JobRunning
from curate.workspace import Workspace, pid_alive

router = APIRouter(prefix="/api")
MAX_PAGE = 200  # faces per listing request
CONTEXT_SIDE = 640  # pixels: the longer side of the original shown around a crop
CONTEXT_MARGIN = 1.0  # crop sides of the original shown on each side of the crop box
_TMP_PART = re.compile(r"\.part-\d+-(\d+)-[0-9a-f]+\.parquet\.tmp")
_IMAGE_CACHE = {"Cache-Control": "private, max-age=300"}


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    face_id: str = Field(max_length=80)
    decision: Literal["good", "bad", "skip"]
    reviewer: str | None = Field(default=None, max_length=64, pattern=r"^[\w .@-]*$")


class UndoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    face_id: str = Field(max_length=80)
    reviewer: str | None = Field(default=None, max_length=64, pattern=r"^[\w .@-]*$")


def open(app) -> None:  # the app's lifespan calls each route family's open and close
    ws: Workspace = app.state.workspace
    sweep_review_tmp(ws)
    app.state.faces = FaceTable(ws)
    app.state.filter_job = FilterJob(ws)


def close(app) -> None:
    job = getattr(app.state, "filter_job", None)
    if job is not None:
        job.join(timeout=10)  # its parts are atomic: a filter cut short leaves whole parts only


def sweep_review_tmp(ws: Workspace) -> int:
    """Remove hidden half-written review parts whose writer is gone (readers skip them anyway)."""
    folder = ws.manifest_dir(REVIEW.name)
    removed = 0
    for path in folder.glob(".part-*.tmp") if folder.is_dir() else ():
        found = _TMP_PART.fullmatch(path.name)
        if found and int(found[1]) != os.getpid() and not pid_alive(int(found[1])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _faces(request: Request) -> FaceTable:
    state = request.app.state
    if not hasattr(state, "faces"):  # an app used without its lifespan (a bare TestClient)
        state.faces = FaceTable(state.workspace)
    return state.faces


def _job(request: Request) -> FilterJob:
    state = request.app.state
    if not hasattr(state, "filter_job"):
        state.filter_job = FilterJob(state.workspace)
    return state.filter_job


@router.get("/faces")
def list_faces(
    request: Request,
    sort: Annotated[Literal[SORTS], Query()] = "unsure",  # type: ignore[valid-type]
    q: Annotated[str, Query(max_length=200)] = "",
    reason: Annotated[Literal[REASONS] | None, Query()] = None,  # type: ignore[valid-type]
    todo: bool = False,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 60,
) -> dict[str, Any]:
    """A page of faces in the order asked (unsure: nearest the filter's threshold first)."""
    faces = _faces(request)
    listing = faces.listing(sort=sort, query=q, reason=reason, todo=todo)
    decided = faces.decisions()
    page = listing[offset : offset + limit]
    return {
        "total": len(listing),
        "offset": offset,
        "limit": limit,
        "threshold": faces.table().threshold,
        "faces": [summary(face, decided.get(face.face_id)) for face in page],
    }


@router.get("/faces/{face_id}")
def face_details(request: Request, face_id: str) -> dict[str, Any]:
    faces = _faces(request)
    face = faces.face(face_id)
    return details(face, faces.decisions().get(face_id), review.history(faces.ws, face_id))


@router.get("/faces/{face_id}/crop.png")
def face_crop(request: Request, face_id: str) -> FileResponse:
    faces = _faces(request)
    path = faces.file(faces.face(face_id).crop["path"])
    if path is None:
        raise HTTPException(404, f"the crop of {face_id} is missing from the workspace")
    return FileResponse(path, media_type="image/png", headers=_IMAGE_CACHE)


@router.get("/faces/{face_id}/context.jpg")
def face_context(request: Request, face_id: str) -> Response:
    """The original around the crop (a margin of a crop side each way), the crop box outlined."""
    faces = _faces(request)
    face = faces.face(face_id)
    path = faces.file(face.crop.get("source_path"))
    if path is None:
        raise HTTPException(404, f"the original of {face_id} is missing from the workspace")
    return Response(context_jpeg(path, face.crop), media_type="image/jpeg", headers=_IMAGE_CACHE)


def context_jpeg(path, crop: dict[str, Any]) -> bytes:
    """JPEG bytes of the original around `crop`'s box, at most CONTEXT_SIDE pixels on its longer side."""
    from PIL import Image, ImageDraw

    from curate.images import ImageCheckError
    from detect.faces.decode import decode

    box = [crop.get(f"crop_{c}") for c in ("x0", "y0", "x1", "y1")]
    if None in box:
        raise HTTPException(404, "the crop manifest has no crop box for this face")
    x0, y0, x1, y1 = box
    margin = CONTEXT_MARGIN * max(x1 - x0, y1 - y0)
    left, top, right, bottom = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    side = max(right - left, bottom - top)
    try:
        decoded = decode(path, scale_for=lambda w, h: min(1.0, CONTEXT_SIDE / max(min(side, max(w, h)), 1)))
    except ImageCheckError as error:
        raise HTTPException(409, f"the original does not decode: {error.message}") from error
    s = decoded.scale
    image = Image.fromarray(decoded.rgb)
    region = [max(0, round(left * s)), max(0, round(top * s))]
    region += [min(image.width, round(right * s)), min(image.height, round(bottom * s))]
    if region[2] <= region[0] or region[3] <= region[1]:
        region = [0, 0, image.width, image.height]
    shown = image.crop(tuple(region))
    outline = [x0 * s - region[0], y0 * s - region[1], x1 * s - region[0], y1 * s - region[1]]
    ImageDraw.Draw(shown).rectangle(outline, outline=(255, 40, 40), width=max(2, round(shown.width / 160)))
    out = io.BytesIO()
    shown.save(out, format="JPEG", quality=85)
    return out.getvalue()


@router.post("/review")
def decide(request: Request, body: DecisionBody) -> dict[str, Any]:
    """Record a decision; answered only once it is on disk."""
    faces = _faces(request)
    face = faces.face(body.face_id)
    reviewer = body.reviewer or "serve"
    return _answer(review.decide(faces.ws, face.face_id, face.image_id, body.decision, reviewer=reviewer))


@router.post("/review/undo")
def undo(request: Request, body: UndoBody) -> dict[str, Any]:
    """Take back the face's newest decision; 409 when it has none."""
    faces = _faces(request)
    face = faces.face(body.face_id)
    try:
        made = review.undo(faces.ws, face.face_id, face.image_id, reviewer=body.reviewer or "serve")
    except InvalidArgument as error:
        raise HTTPException(409, str(error)) from error
    return _answer(made)


def _answer(made: review.Decision) -> dict[str, Any]:
    at = made.reviewed_at.isoformat()
    return {
        "face_id": made.face_id, "decision": made.decision, "undo": made.undo, "at": at,
        "decision_id": made.decision_id,
    }  # fmt: skip


@router.get("/counts")
def counts(request: Request) -> dict[str, Any]:
    """Kept, dropped and duplicate faces, the threshold and the seeds' leave-one-out precision, decisions."""
    return {**_faces(request).counts(), "job": _job(request).state()}


@router.post("/filter/run", status_code=202)
def run_filter(request: Request) -> dict[str, Any]:
    """Run the filter again in the background (its last options, review seeds included); 409 if running."""
    try:
        return _job(request).start()
    except JobRunning as error:
        raise HTTPException(409, str(error)) from error


@router.get("/filter/job")
def filter_job(request: Request) -> dict[str, Any]:
    return _job(request).state()
