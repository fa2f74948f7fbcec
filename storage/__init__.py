"""Persistence: the SQL schema, its migrations, queries, and model packages."""
