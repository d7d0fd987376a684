"""cbm_luigi: the nightly Progress OpenEdge -> SQL Server (or DuckDB) pipeline on Luigi.

`luigi --module cbm_luigi LoadAll --mode incremental` finds the tasks here.
"""
from . import scheduling
from .settings import install_log_masking
from .tasks import ExtractParquet, LoadAll, LoadTable, MergeOds, StageTable, ValidateTable  # noqa: F401

scheduling.install()
install_log_masking()

__version__ = "0.1.0"
