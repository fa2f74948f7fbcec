"""dicom-triage daemon: receive -> store -> infer -> report -> worklist.

Read the flow in the module names: ``scp`` receives C-STOREs, ``spool``
stores them durably, ``pipeline`` decodes and infers, ``reporting`` sends the
Structured Report of each complete study, and ``worklist`` answers C-FIND for
urgent referrals. ``lifecycle`` runs them under systemd.
"""

__version__ = "0.1.0"
