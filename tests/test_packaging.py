"""The package declares what it imports: every third-party module imported anywhere in
athenaq comes from a distribution named in its requirements (or in the `local` extra,
for the local engine alone)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import athenaq

PACKAGE = Path(athenaq.__file__).parent


def imported_top_level_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared(extra: str | None) -> set[str]:
    """Normalized names of the distributions athenaq requires (with `extra`)."""
    names = set()
    for requirement in requires("athenaq") or []:
        name, _, marker = requirement.partition(";")
        if ("extra ==" in marker) != (extra is not None) or (
            extra is not None and f'"{extra}"' not in marker
        ):
            continue
        names.add(_normalized(re.split(r"[\s\[<>=!~]", name.strip(), maxsplit=1)[0]))
    return names


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_declared() -> None:
    distributions = packages_distributions()
    core, local = declared(None), declared("local")
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        allowed = core | local if "local" in path.relative_to(PACKAGE).parts else core
        for module in imported_top_level_modules(path):
            if module in sys.stdlib_module_names or module in ("athenaq", "__future__"):
                continue
            owners = {_normalized(d) for d in distributions.get(module, [module])}
            if not owners & allowed:
                missing.append(f"{path.relative_to(PACKAGE)}: {module} ({', '.join(owners)})")
    assert not missing, "imported but not declared: " + "; ".join(missing)
