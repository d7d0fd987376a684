import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "cbm_luigi" / "__init__.py").read_text(), re.M).group(1)
# cbm_luigi/shipped.py's NAMES: what the package reads besides its code. config/ by name: an operator's settings
# file kept beside the template (config/prod.env) must never go into a wheel (found in review)
SHIPPED = ("sql", "config/tables.csv", "config/.env.template", "luigi.cfg")


class BuildPyWithShipped(build_py):
    """Copies sql/, config/ and luigi.cfg into the wheel as cbm_luigi/shipped/ (an installed package has no
    repository beside it: init-db found no SQL script, and `luigi` no [retcode]). An editable install reads them
    from the repository instead."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "cbm_luigi" / "shipped"
        shutil.rmtree(dest, ignore_errors=True)  # a file a release removed must not outlive it in build/
        for name in SHIPPED:
            src = HERE / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("*.env", ".env*", "__pycache__"))
            else:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
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
        # 2.0: its spill files carry the pid (leftovers.py removes a killed process's by it), its reserved words
        "duckdb>=2.0",
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
