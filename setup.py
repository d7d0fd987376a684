import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "cbm_luigi" / "__init__.py").read_text(), re.M).group(1)
SHIPPED = ("sql", "config", "luigi.cfg")  # cbm_luigi/shipped.py's NAMES: what the package reads besides its code


class BuildPyWithShipped(build_py):
    """Copies sql/, config/ and luigi.cfg into the wheel as cbm_luigi/shipped/ (an installed package has no
    repository beside it: init-db found no SQL script, and `luigi` no [retcode]). An editable install reads them
    from the repository instead."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "cbm_luigi" / "shipped"
        for name in SHIPPED:
            src = HERE / name
            if src.is_dir():
                shutil.copytree(src, dest / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".env", "__pycache__"))
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)


setup(
    name="cbm_luigi",
    version=VERSION,
    description="Nightly Progress OpenEdge -> SQL Server / DuckDB pipeline on Luigi",
    packages=find_packages(include=["cbm_luigi", "cbm_luigi.*"]),
    cmdclass={"build_py": BuildPyWithShipped},
    python_requires=">=3.10",
    install_requires=[
        "luigi>=3.5,<4",
        "duckdb>=1.4",
        "pyarrow>=15",
        "pyodbc>=5",
        "python-dotenv>=1.0",
    ],
    extras_require={
        "fast": ["arrow-odbc>=8"],
        "mssql": ["mssql-python>=1.13"],
        "test": ["pytest>=8", "sqlfluff>=3", "psutil>=5", "arrow-odbc>=8", "wheel>=0.40"],  # wheel: tests build one
    },
    entry_points={"console_scripts": ["cbm-etl=cbm_luigi.cli:main"]},
)
