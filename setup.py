from setuptools import find_packages, setup

setup(
    name="cbm_luigi",
    version="0.1.0",
    description="Nightly Progress OpenEdge -> SQL Server / DuckDB pipeline on Luigi",
    packages=find_packages(include=["cbm_luigi", "cbm_luigi.*"]),
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
        "test": ["pytest>=8", "sqlfluff>=3", "psutil>=5", "arrow-odbc>=8"],
    },
    entry_points={"console_scripts": ["cbm-etl=cbm_luigi.cli:main"]},
)
