"""Synthetic data and the demo: test and demo tooling, never used by the daemon.

``images`` draws OCT B-scans and chest radiographs of the paper's classes
with lesions at known places; ``files`` writes them as the paper's JPEG data
sets or as DICOM studies; ``demo`` runs the whole path once on them
(``triage demo``). Only the ``triage phantoms`` and ``triage demo`` commands
import this package.
"""
