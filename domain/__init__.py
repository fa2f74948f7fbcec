"""The contracts at the bottom: errors and domain types.

Every other package of dicom-triage may import this one; it imports none of
them (``tests/test_layers.py`` keeps it so).
"""
