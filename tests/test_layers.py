"""The layering rules of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", _modules("mpc"), ids=lambda p: str(p.relative_to(ROOT)))
def test_mpc_imports_neither_p2pfl_nor_trio(path: Path) -> None:
    bad = {n for n in _imports(path) if _top(n) in {"p2pfl", "trio", "asyncio", "torch"}}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


ASYNCIO_BRIDGE = {"p2pfl/transport/webrtc.py", "p2pfl/transport/_webrtc_bridge.py"}


@pytest.mark.parametrize("path", _modules("p2pfl"), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_bridge_imports_asyncio(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    if rel in ASYNCIO_BRIDGE:
        return
    bad = {n for n in _imports(path) if _top(n) in {"asyncio", "aiortc", "aioice"}}
    assert not bad, f"{rel} imports {sorted(bad)}"


LOWER_LAYERS_MUST_NOT_IMPORT = {
    "p2pfl/wire": {"p2pfl.identity", "p2pfl.transport", "p2pfl.overlay", "p2pfl.federation",
                   "p2pfl.ledger", "p2pfl.learning", "trio"},
    "p2pfl/identity": {"p2pfl.transport", "p2pfl.overlay", "p2pfl.federation", "p2pfl.ledger",
                       "p2pfl.learning"},
    "p2pfl/transport": {"p2pfl.overlay", "p2pfl.federation", "p2pfl.ledger", "p2pfl.learning"},
    "p2pfl/overlay": {"p2pfl.federation", "p2pfl.ledger", "p2pfl.learning", "torch"},
    "p2pfl/ledger": {"p2pfl.overlay", "p2pfl.transport", "trio", "torch"},
    "p2pfl/learning": {"p2pfl.transport", "p2pfl.overlay", "p2pfl.federation", "p2pfl.ledger",
                       "trio"},
}


@pytest.mark.parametrize("layer", sorted(LOWER_LAYERS_MUST_NOT_IMPORT))
def test_lower_layers_do_not_import_upper_layers(layer: str) -> None:
    forbidden = LOWER_LAYERS_MUST_NOT_IMPORT[layer]
    for path in _modules(layer):
        bad = {n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in forbidden)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_nothing_pickles() -> None:
    for pkg in ("p2pfl", "mpc"):
        for path in _modules(pkg):
            bad = {n for n in _imports(path) if _top(n) in {"pickle", "dill", "cloudpickle", "marshal"}}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
            assert "torch.load(" not in path.read_text(), f"{path} uses torch.load (pickle)"
