"""STOW-RS (PS3.18 10.5): instances stored over HTTP, through the very
store path of C-STORE (``daemon.scp.store_received``): the same header
checks and quarantine, the file fsync'ed and its row committed before the
answer, the same duplicate policy. The answer names each instance, stored
or failed with its reason (PS3.18 Table 10.5.3-1), as DICOM JSON.

Each part of the ``multipart/related; type="application/dicom"`` body is
written to its own file in the spool's ``incoming/`` folder as it arrives,
so a stored one is hard-linked into the spool as pynetdicom's files are.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.filereader import read_file_meta_info
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.routing import ACCEPTED_STORAGE_SOP_CLASSES
from daemon.scp import STORAGE_TRANSFER_SYNTAXES, StoreRequest, store_received
from daemon.web.auth import peer_address
from daemon.web.context import WebContext, context_of, user_of
from daemon.web.multipart import MultipartError, Part, content_type_parameters, read_parts
from dicom_io.status import Status

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_PARTS = 10_000
# PS3.18 Table 10.5.3-1 failure reasons beside the C-STORE statuses.
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
_STORED = (Status.SUCCESS, Status.COERCION_OF_DATA_ELEMENTS)


async def store_instances(request: Request) -> Response:
    """
    summary: "STOW-RS: store instances (multipart/related; type=\\"application/dicom\\")"
    requestBody:
      content: {multipart/related: {}}
    responses:
      200: {description: every instance stored (ReferencedSOPSequence)}
      202: {description: some stored, some failed (FailedSOPSequence with FailureReason)}
      400: {description: not a well-formed multipart body}
      409: {description: none stored}
      413: {description: a part, or the number of parts, past the limits}
      415: {description: "not multipart/related with type=application/dicom"}
    """
    context = context_of(request)
    if context.ingest is None:
        return _problem("this node does not receive", 503)
    media_type, parameters = content_type_parameters(request.headers.get("content-type", ""))
    part_type = parameters.get("type", "application/dicom").lower()
    if media_type != "multipart/related" or part_type != "application/dicom":
        return _problem('send multipart/related; type="application/dicom"', 415)
    if not (boundary := parameters.get("boundary")):
        return _problem("the content type names no boundary", 400)
    try:
        parts = await read_parts(
            request.stream(),
            boundary,
            context.ingest.spool.incoming,
            context.max_dataset_bytes,
            MAX_PARTS,
        )
    except MultipartError as error:
        return _problem(str(error), 413 if error.too_large else 400)
    if not parts:
        return _problem("the body holds no instance", 400)
    try:
        answers = await run_in_threadpool(_store_parts, context, request, parts)
    finally:
        for part in parts:
            part.path.unlink(missing_ok=True)
    stored = [a for a in answers if a["status"] in _STORED]
    failed = [a for a in answers if a["status"] not in _STORED]
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_item(a) for a in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item(a) for a in failed]}
    status_code = 200 if not failed else 202 if stored else 409
    return JSONResponse(body, status_code=status_code, media_type=DICOM_JSON)


class _OneRequest:
    """What the writer caches a request's ids under (weakly, as an association)."""


def _store_parts(context: WebContext, request: Request, parts: list[Part]) -> list[dict[str, Any]]:
    assert context.ingest is not None
    # Parts of one request share their patient, study and series ids.
    one_request = _OneRequest()
    calling = "STOW-RS"
    answers = []
    studies: dict[tuple[str, str], int] = {}
    for part in parts:
        answer = _store_part(context, part, calling, one_request)
        if answer.pop("study", None) is not None:
            key = (answer.pop("patient_id"), answer.pop("study_instance_uid"))
            studies[key] = studies.get(key, 0) + 1
        answers.append(answer)
    refused = sum(1 for a in answers if a["status"] not in _STORED)
    for (patient_id, study_uid), count in studies.items():
        context.trail.record(
            "instances-stored",
            peer_address=peer_address(request.scope),
            patient_id=patient_id,
            study_instance_uid=study_uid,
            instances_stored=count,
            detail=f"STOW-RS user={user_of(request)}",
        )
    if refused:
        logger.warning("STOW-RS from %s: %d instance(s) refused", user_of(request), refused)
    return answers


def _store_part(
    context: WebContext, part: Part, calling: str, one_request: object
) -> dict[str, Any]:
    assert context.ingest is not None
    if part.content_type != "application/dicom":
        return {"status": Status.CANNOT_UNDERSTAND, "class": "", "instance": ""}
    try:
        meta = read_file_meta_info(part.path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        instance = str(meta.MediaStorageSOPInstanceUID)
        syntax = str(meta.TransferSyntaxUID)
    except Exception:
        # No Part 10 file meta: nothing to store it by.
        return {"status": Status.CANNOT_UNDERSTAND, "class": "", "instance": ""}
    answer: dict[str, Any] = {"class": sop_class, "instance": instance}
    if sop_class not in ACCEPTED_STORAGE_SOP_CLASSES:
        return {**answer, "status": SOP_CLASS_NOT_SUPPORTED}
    if syntax not in STORAGE_TRANSFER_SYNTAXES:
        return {**answer, "status": TRANSFER_SYNTAX_NOT_SUPPORTED}
    outcome = store_received(
        context.ingest,
        StoreRequest(instance, sop_class, syntax, calling, one_request),
        lambda: part.path,
    )
    answer["status"] = outcome.status
    if outcome.study_instance_uid:
        answer.update(
            study=True,
            patient_id=outcome.patient_id,
            study_instance_uid=outcome.study_instance_uid,
        )
    return answer


def _item(answer: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if answer["class"]:
        item["00081150"] = {"vr": "UI", "Value": [answer["class"]]}
    if answer["instance"]:
        item["00081155"] = {"vr": "UI", "Value": [answer["instance"]]}
    status = int(answer["status"])
    if status == Status.COERCION_OF_DATA_ELEMENTS:
        item["00081196"] = {"vr": "US", "Value": [status]}  # WarningReason
    elif status not in _STORED:
        item["00081197"] = {"vr": "US", "Value": [status]}  # FailureReason
    return item


def _problem(message: str, status_code: int) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


routes = [Route("/dicomweb/studies", store_instances, methods=["POST"])]
