"""Persistence: the SQL schema (``models``), its migrations, and the queries of each aggregate."""
