"""dicom-triage daemon: receive -> store -> infer -> report -> deliver, and the worklist.

Read the flow in the module names: ``scp`` receives C-STOREs, ``spool``
stores them durably, ``pipeline`` decodes and infers, ``reporting`` builds
the Structured Report of each complete study, ``delivery`` sends it, and
``worklist`` answers C-FIND for urgent referrals; ``explain`` makes the
occlusion maps. ``lifecycle`` wires them; ``supervisor`` owns their threads,
``runtime`` the settings and models they share; ``cli`` is the entry point.
"""

__version__ = "0.1.0"
