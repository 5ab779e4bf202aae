"""pyproject.toml ships every package and every template (pip install . must be complete)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed() -> None:
    listed = set(_tool()["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "listserv").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "listserv.templates" in listed
    assert _tool()["package-dir"]["listserv.templates"] == "templates"


def test_every_template_file_is_package_data() -> None:
    patterns = _tool()["package-data"]["listserv.templates"]
    for f in (ROOT / "templates").rglob("*"):
        if f.is_file() and f.name != "README.md":
            name = f.relative_to(ROOT / "templates").as_posix()
            assert any(fnmatch.fnmatch(name, p.replace("**/", "*")) or
                       fnmatch.fnmatch(f.name, p.replace("**/", "")) for p in patterns), name


def test_console_script() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["listserv"] == "listserv.cli:main"
