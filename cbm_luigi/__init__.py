"""cbm_luigi: the nightly Progress OpenEdge -> SQL Server (or DuckDB) pipeline on Luigi.

`luigi --module cbm_luigi LoadAll --mode incremental` finds the tasks here.
"""
import gc

_collecting = gc.isenabled()
gc.disable()  # importing builds ~50,000 objects that all live on (frozen below): no pass could free one (6 ms)
try:
    from . import scheduling
    from .settings import install_log_masking
    from .tasks import ExtractParquet, LoadAll, LoadTable, MergeOds, StageTable, ValidateTable  # noqa: F401

    scheduling.install()
    scheduling.config_defaults()
    install_log_masking()
    # What is loaded now (Luigi, DuckDB, pyarrow, these modules: ~50,000 objects) lives as long as the process: left
    # out of the garbage collector's full passes, including the ones at exit (measured: 40 ms less a wide reload;
    # 45 ms less for a run whose tasks are all complete)
    gc.freeze()
finally:
    if _collecting:
        gc.enable()

__version__ = "0.2.0"  # raised with each release: pip installs a wheel of a version it has only when forced
