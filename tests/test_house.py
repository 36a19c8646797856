"""The direction of dependency (docs/architecture.md): ``replay`` never imports ``netconfig``
or ``appliance``; ``netconfig`` never imports ``replay`` or ``appliance``. ``strictconf`` (the
one strict YAML reader all three use) is a leaf: it imports none of them. Read from the
sources (every import statement, also those inside functions), so a lazy import cannot hide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"replay": ("netconfig", "appliance"), "netconfig": ("replay", "appliance"),
             "strictconf": ("replay", "netconfig", "appliance")}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_across_the_house(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, mod in _imports(path):
            if mod.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from appliance.live import engine\n    import netconfig.ops\n")
    assert [m for _, m in _imports(p)] == ["appliance.live", "netconfig.ops"]
