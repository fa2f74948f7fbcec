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

import collections
import dataclasses
import logging
from typing import Any

from pydicom.filereader import read_file_meta_info
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.routing import ACCEPTED_STORAGE_SOP_CLASSES
from daemon.scp import STORAGE_TRANSFER_SYNTAXES, StoreOutcome, StoreRequest, store_received
from daemon.web.auth import peer_address
from daemon.web.context import WebContext, context_of, json_error, user_of
from daemon.web.multipart import MultipartError, Part, content_type_parameters, read_parts
from dicom_io.status import Status

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_PARTS = 10_000
# What the instances' rows and the log name as their sender.
CALLING = "STOW-RS"
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
        return json_error("this node does not receive", 503)
    media_type, parameters = content_type_parameters(request.headers.get("content-type", ""))
    part_type = parameters.get("type", "application/dicom").lower()
    if media_type != "multipart/related" or part_type != "application/dicom":
        return json_error('send multipart/related; type="application/dicom"', 415)
    if not (boundary := parameters.get("boundary")):
        return json_error("the content type names no boundary", 400)
    try:
        parts = await read_parts(
            request.stream(),
            boundary,
            context.ingest.spool.incoming,
            context.max_dataset_bytes,
            MAX_PARTS,
        )
    except MultipartError as error:
        return json_error(str(error), 413 if error.too_large else 400)
    if not parts:
        return json_error("the body holds no instance", 400)
    try:
        answers = await run_in_threadpool(_store_parts, context, request, parts)
    finally:
        for part in parts:
            part.path.unlink(missing_ok=True)
    stored = [a.item() for a in answers if a.stored]
    failed = [a.item() for a in answers if not a.stored]
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status_code = 200 if not failed else 202 if stored else 409
    return JSONResponse(body, status_code=status_code, media_type=DICOM_JSON)


class _OneRequest:
    """What the writer caches a request's ids under (weakly, as an association)."""


@dataclasses.dataclass(frozen=True)
class _PartAnswer:
    """One part's outcome: the instance it names (empty when it names none)."""

    sop_class_uid: str
    sop_instance_uid: str
    outcome: StoreOutcome

    @property
    def stored(self) -> bool:
        return self.outcome.status in _STORED

    def item(self) -> dict[str, Any]:
        """Its item of ReferencedSOPSequence or FailedSOPSequence (DICOM JSON)."""
        item: dict[str, Any] = {}
        if self.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [self.sop_class_uid]}
        if self.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [self.sop_instance_uid]}
        status = int(self.outcome.status)
        if status == Status.COERCION_OF_DATA_ELEMENTS:
            item["00081196"] = {"vr": "US", "Value": [status]}  # WarningReason
        elif not self.stored:
            item["00081197"] = {"vr": "US", "Value": [status]}  # FailureReason
        return item


def _store_parts(context: WebContext, request: Request, parts: list[Part]) -> list[_PartAnswer]:
    # Parts of one request share their patient, study and series ids.
    one_request = _OneRequest()
    answers = [_store_part(context, part, one_request) for part in parts]
    studies = collections.Counter(
        (a.outcome.patient_id, a.outcome.study_instance_uid)
        for a in answers
        if a.outcome.study_instance_uid
    )
    for (patient_id, study_uid), count in studies.items():
        context.trail.record(
            "instances-stored",
            peer_address=peer_address(request.scope),
            patient_id=patient_id,
            study_instance_uid=study_uid,
            instances_stored=count,
            detail=f"STOW-RS user={user_of(request)}",
        )
    if refused := sum(1 for a in answers if not a.stored):
        logger.warning("STOW-RS from %s: %d instance(s) refused", user_of(request), refused)
    return answers


def _store_part(context: WebContext, part: Part, one_request: _OneRequest) -> _PartAnswer:
    assert context.ingest is not None
    unreadable = _PartAnswer("", "", StoreOutcome(Status.CANNOT_UNDERSTAND))
    if part.content_type != "application/dicom":
        return unreadable
    try:
        meta = read_file_meta_info(part.path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        instance = str(meta.MediaStorageSOPInstanceUID)
        syntax = str(meta.TransferSyntaxUID)
    except Exception:
        return unreadable  # no Part 10 file meta: nothing to store it by
    if sop_class not in ACCEPTED_STORAGE_SOP_CLASSES:
        return _PartAnswer(sop_class, instance, StoreOutcome(SOP_CLASS_NOT_SUPPORTED))
    if syntax not in STORAGE_TRANSFER_SYNTAXES:
        return _PartAnswer(sop_class, instance, StoreOutcome(TRANSFER_SYNTAX_NOT_SUPPORTED))
    outcome = store_received(
        context.ingest,
        StoreRequest(instance, sop_class, syntax, CALLING, one_request),
        lambda: part.path,
    )
    return _PartAnswer(sop_class, instance, outcome)


routes = [Route("/dicomweb/studies", store_instances, methods=["POST"])]
