"""The HTTP service: web pages, the REST API and DICOMweb (``[http]``).

``server`` runs uvicorn as a service the supervisor owns; ``app`` assembles
the Starlette application from ``pages``, ``api`` and ``auth``.
"""
