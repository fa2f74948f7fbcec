"""The model runtime: package format, preprocessing, ONNX Runtime classifier, occlusion.

It sits below both ``daemon`` (which triages with it) and ``trainer``
(which writes packages and evaluates them through the same classifier), and
above ``domain``; it imports neither ``daemon`` nor ``trainer``.
"""
