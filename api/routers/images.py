"""Images: add (upload or server-side path), read metadata, original, thumbnail, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from PIL import Image

from api.auth import require_read, require_write
from api.deps import EngineDep, IngestDep, SettingsDep, ThumbnailsDep
from api.openapi import READ_ERRORS, WRITE_ERRORS, problems
from api.paths import confine
from api.ratelimit import rate_limit
from api.routers.search import read_upload
from api.schemas import AddPathRequest, ImagePublic
from api.settings import MAX_ID
from api.views import image_public

router = APIRouter(prefix="/images", tags=["images"], dependencies=[Depends(rate_limit)])

ImageId = Annotated[int, Path(ge=0, le=MAX_ID, description="the image's id")]
Read = [Depends(require_read)]
Write = [Depends(require_write)]
#: an image id is its content's hash, and every read checks the file still holds that content (retrieval.files)
IMMUTABLE = "public, max-age=31536000, immutable"
ADDED: dict[int | str, dict[str, Any]] = {
    200: {"description": "already indexed: the existing image"},
    201: {"description": "added"},
}


@router.post(
    "",
    status_code=201,
    dependencies=Write,
    summary="Add an uploaded image",
    responses={**ADDED, **problems(*WRITE_ERRORS, 413, 415)},
)
def add_upload(
    *,
    request: Request,
    response: Response,
    engine: EngineDep,
    ingest: IngestDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the image to add; the server keeps the original")],
) -> ImagePublic:
    """Index an uploaded photo. The same content uploaded again answers 200 with the existing image."""
    data = read_upload(file, settings)
    record, created = ingest.add_bytes(data, name=file.filename or "the upload")
    response.status_code = 201 if created else 200
    return image_public(request, engine, record.id)


@router.post(
    "/from-path",
    status_code=201,
    dependencies=Write,
    summary="Add an image file on the server",
    responses={**ADDED, **problems(*WRITE_ERRORS, 404, 413, 415)},
)
def add_path(
    *,
    request: Request,
    response: Response,
    engine: EngineDep,
    ingest: IngestDep,
    settings: SettingsDep,
    body: AddPathRequest,
) -> ImagePublic:
    """Index one file under the server's allowed roots (IMSEARCH_ALLOWED_ROOTS)."""
    path = confine(body.path, settings.allowed_roots)
    record, created = ingest.add_file(path)
    response.status_code = 201 if created else 200
    return image_public(request, engine, record.id)


@router.get("/{image_id}", dependencies=Read, summary="Image metadata", responses=problems(*READ_ERRORS, 404))
def get_image(request: Request, engine: EngineDep, image_id: ImageId) -> ImagePublic:
    """Size, format, files, labels and detected regions of an indexed image."""
    return image_public(request, engine, image_id)


@router.delete(
    "/{image_id}",
    status_code=204,
    dependencies=Write,
    summary="Delete an image",
    responses=problems(*WRITE_ERRORS, 404),
)
def delete_image(engine: EngineDep, ingest: IngestDep, thumbnails: ThumbnailsDep, image_id: ImageId) -> Response:
    """Remove the image from the collection (an uploaded original is deleted; files on disk are not)."""
    ingest.remove(image_id)
    thumbnails.forget(image_id)
    return Response(status_code=204)


@router.get(
    "/{image_id}/original",
    dependencies=Read,
    summary="The original image file",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"image/*": {}}, "description": "the file"},
        **problems(*READ_ERRORS, 404, 409),
    },
)
def get_original(engine: EngineDep, image_id: ImageId) -> StreamingResponse:
    """The indexed file, re-checked at this read: inside the allowed roots and still the indexed content.

    404 when it is gone or links out of the roots, 409 when its content changed since indexing.
    """
    record = engine.image(image_id)
    opened = engine.open_image_file(image_id)  # streamed from the descriptor that was checked
    headers = {"Cache-Control": IMMUTABLE, "Content-Length": str(opened.size), "ETag": f'"{record.sha256}"'}
    return StreamingResponse(opened.chunks(), media_type=media_type_of(record.format), headers=headers)


def media_type_of(fmt: str) -> str:
    """The MIME type of a Pillow format name ("JPEG" -> "image/jpeg")."""
    Image.init()  # Pillow fills its MIME table lazily, on the first decode: not yet right after start-up
    return Image.MIME.get(fmt.upper(), "application/octet-stream")


@router.get(
    "/{image_id}/thumbnail",
    dependencies=Read,
    summary="A JPEG thumbnail (cached)",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the thumbnail"},
        **problems(*READ_ERRORS, 404, 409),
    },
)
def get_thumbnail(
    engine: EngineDep,
    thumbnails: ThumbnailsDep,
    image_id: ImageId,
    size: Annotated[int, Query(ge=16, le=1024, description="long side, snapped up to 128/256/512/1024")] = 256,
) -> FileResponse:
    path = thumbnails.get(engine, image_id, size)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": IMMUTABLE})
