"""cbm_luigi: the nightly Progress OpenEdge -> SQL Server (or DuckDB) pipeline on Luigi.

`luigi --module cbm_luigi LoadAll --mode incremental` finds the tasks here.
"""
from . import scheduling
from .settings import install_log_masking
from .tasks import ExtractParquet, LoadAll, LoadTable, MergeOds, StageTable, ValidateTable  # noqa: F401

scheduling.install()
scheduling.config_defaults()
install_log_masking()

__version__ = "0.2.0"  # raised with each release: pip installs a wheel of a version it has only when forced
