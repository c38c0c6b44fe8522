"""The photo-library index and search: a store (sqlite3), the embed pipeline, exact search."""

from .index import Hit, Index, Summary

__all__ = ["Hit", "Index", "Summary"]
