"""The warehouse side: it knows DuckDB and T-SQL, nothing about Progress."""
from .base import Warehouse, open_warehouse  # noqa: F401
