"""The files that ship with cbm_luigi beside its code: `sql/` (init-db's scripts), `config/` (tables.csv,
.env.template) and `luigi.cfg` (exit codes, scheduler settings, resources).

They live at the top of the repository. A wheel carries them inside the package, in `cbm_luigi/shipped/` (setup.py
copies them there when it builds), because an installed package has no repository beside it; a checkout or an
editable install (`pip install -e .`, what `make` does) reads them from the repository itself."""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NAMES = ("sql", "config/tables.csv", "config/.env.template", "luigi.cfg")  # what setup.py copies into the wheel


def places() -> list[Path]:
    """Where shipped files are looked for, in order: the wheel's copy, then the repository of a checkout (only
    when it is one: a site-packages directory may hold an unrelated `sql` package)."""
    out = [PACKAGE / "shipped"]
    if (PACKAGE.parent / "setup.py").is_file():
        out.append(PACKAGE.parent)
    return out


def shipped(name: str) -> Path:
    """The path of shipped file or directory `name` (e.g. "sql", "config/tables.csv", "luigi.cfg")."""
    for base in places():
        if (base / name).exists():
            return base / name
    raise FileNotFoundError(
        f"{name} is not where this installation of cbm_luigi keeps it (looked in "
        f"{' and '.join(str(p) for p in places())}): reinstall cbm_luigi, from its wheel (built with `pip wheel .`) "
        f"or from a checkout (`pip install -e .`)")
