"""The daemon's reads and writes, one module per aggregate, one function per
question or change. Each aggregate's state changes live in its own module:

- ``instances``: recorded on receipt, leased for triage, given a result or a final state
- ``studies``: reopened by a new image, their result kept current, reported once stable
- ``reports``: each study's SR, a later one superseding the one before
- ``deliveries``: the outbox, one row per object and destination
- ``occlusion_maps``: which triaged images still need a map
- ``worklist``: the urgent referrals
- ``results``: triaged studies and one study's images, maps and deliveries, for the web
- ``retention``: retiring studies past their time
- ``audit``: the audit trail, added to and read back
- ``common``: the database clock, insert-or-read, leases

Every function takes a ``Session`` and leaves committing to the caller, so
that the caller decides what is one transaction. Callers use
``from storage import queries`` and ``queries.<function>``.
"""

from storage.queries.audit import (
    AuditFilter,
    add_audit_event,
    audit_events,
    delivery_subject,
)
from storage.queries.common import (
    NO_PATIENT_ID_ISSUER,
    Destination,
    database_now,
    get_or_insert,
    header_text,
    insert_or_get_id,
    insert_statement,
    lease_row,
    lease_rows,
)
from storage.queries.deliveries import (
    OutboxRow,
    add_occlusion_deliveries,
    delivery_counts,
    due_deliveries,
    lease_delivery,
    outbox,
    pending_destinations,
    purge_deliveries,
    queue_deliveries,
    record_delivery_outcome,
    retry_deliveries,
)
from storage.queries.instances import (
    NewInstance,
    find_instance,
    lease_instance,
    lease_instances,
    leased_instance,
    leased_instances,
    mark_instance,
    new_instance,
    pending_instance_ids,
    record_instance,
    record_instances,
    record_result,
    record_results,
    release_all_leases,
    release_instance,
    replace_instance,
    return_instance,
    work_counts,
)
from storage.queries.occlusion_maps import (
    delete_occlusion_maps,
    instances_needing_maps,
    map_counts,
    map_failed,
)
from storage.queries.reports import add_report, latest_report
from storage.queries.results import (
    DeliveryRow,
    ImageResult,
    StudyDetail,
    StudyFilter,
    StudyRow,
    delivery_study,
    occlusion_map_content,
    study_deliveries,
    study_detail,
    triaged_studies,
)
from storage.queries.retention import Purge, purge_studies
from storage.queries.studies import (
    commit_report_state,
    reopen_studies,
    report_failed,
    seconds_until_quiet,
    studies_ready_to_report,
    study_if_ready,
    triaged_instances,
    update_study_result,
)
from storage.queries.worklist import WorklistEntry, urgent_worklist

__all__ = [
    "NO_PATIENT_ID_ISSUER",
    "AuditFilter",
    "DeliveryRow",
    "Destination",
    "ImageResult",
    "NewInstance",
    "OutboxRow",
    "Purge",
    "StudyDetail",
    "StudyFilter",
    "StudyRow",
    "WorklistEntry",
    "add_audit_event",
    "add_occlusion_deliveries",
    "add_report",
    "audit_events",
    "commit_report_state",
    "database_now",
    "delete_occlusion_maps",
    "delivery_counts",
    "delivery_study",
    "delivery_subject",
    "due_deliveries",
    "find_instance",
    "get_or_insert",
    "header_text",
    "insert_or_get_id",
    "insert_statement",
    "instances_needing_maps",
    "latest_report",
    "lease_delivery",
    "lease_instance",
    "lease_instances",
    "lease_row",
    "lease_rows",
    "leased_instance",
    "leased_instances",
    "map_counts",
    "map_failed",
    "mark_instance",
    "new_instance",
    "occlusion_map_content",
    "outbox",
    "pending_destinations",
    "pending_instance_ids",
    "purge_deliveries",
    "purge_studies",
    "queue_deliveries",
    "record_delivery_outcome",
    "record_instance",
    "record_instances",
    "record_result",
    "record_results",
    "release_all_leases",
    "release_instance",
    "reopen_studies",
    "replace_instance",
    "report_failed",
    "retry_deliveries",
    "return_instance",
    "seconds_until_quiet",
    "studies_ready_to_report",
    "study_deliveries",
    "study_detail",
    "study_if_ready",
    "triaged_instances",
    "triaged_studies",
    "update_study_result",
    "urgent_worklist",
    "work_counts",
]
