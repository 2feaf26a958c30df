"""The package's shape: imports run one way (no cycle, function-level imports included), the decode path stays
light, and every shipped model file is stored once."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tec_zarr
from tec_zarr.models import MODELS_DIR, get_card, list_models, load_model
from tec_zarr.models.registry import SHIPPED, file_path

ROOT = Path(tec_zarr.__file__).resolve().parents[1]
PACKAGES = ("tec_zarr", "gdal_driver")
# Two families of models, each sharing its encoder, tables and integer synthesis (4.2 MB a set), and the bundled
# sample: 24.8 MB at tec-tt-2's release; tec-fp-3 (files of its own, 3.0 MB) made it 28.4 MB, tec-ctx-3 and tec-tt-3
# (entropy networks of their own, 4.5 MB) 32.9 MB. The bound catches a copy too many of a family's shared files.
WHEEL_LIMIT_BYTES = 34 * 10**6


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest module of ours that ``name`` (a module, or a name inside one) refers to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports anywhere in its body (``from . import x`` counts as ``pkg.x``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # tec_zarr.codec.encoding imports the codec classes inside a function: the edge must be there.
    assert "tec_zarr.codec.zarr3" in graph["tec_zarr.codec.encoding"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("low, high", [
    ("tec_zarr.bitstream", "tec_zarr.pipeline"), ("tec_zarr.bitstream", "tec_zarr.models"),
    ("tec_zarr.entropy", "tec_zarr.models"), ("tec_zarr.integer", "tec_zarr.models"),
    ("tec_zarr.residual", "tec_zarr.pipeline"), ("tec_zarr.pipeline", "tec_zarr.codec"),
    ("tec_zarr.codec", "tec_zarr.gdal"), ("tec_zarr.runtime", "tec_zarr.entropy"),
])
def test_arrows_run_one_way(low, high):
    """A lower layer never imports a higher one: components receive what they need."""
    graph = import_graph()
    offending = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith(low)
                       for t in targets if t.startswith(high))
    assert offending == []


def test_no_two_shipped_model_files_hold_the_same_bytes():
    digests: dict[str, Path] = {}
    for path in sorted(p for p in MODELS_DIR.rglob("*") if p.is_file() and p.suffix != ".py"):
        if path.name == "manifest.json":
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest not in digests, f"{path} repeats {digests[digest]}"
        digests[digest] = path


def test_every_shipped_model_file_resolves_and_is_verified():
    names = {card.name for card in list_models()}
    assert set(SHIPPED) <= names
    for name in SHIPPED:
        model = load_model(name)
        for filename in model.card.files:
            assert file_path(model.card, filename).is_file()
        assert model.coder.name == model.card.manifest.get("entropy_model", "factorized")


def test_wheel_stores_every_file_once(tmp_path):
    """Shared model files stored once (models/blobs) keep the wheel small: no two files in it hold the same bytes."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("tec_zarr-*.whl")
    assert wheel.stat().st_size < WHEEL_LIMIT_BYTES
    archive = zipfile.ZipFile(wheel)
    big = [n for n in archive.namelist() if archive.getinfo(n).file_size > 4096]
    digests = [hashlib.sha256(archive.read(n)).hexdigest() for n in big]
    assert len(set(digests)) == len(digests), [n for n, d in zip(big, digests) if digests.count(d) > 1]
    names = archive.namelist()
    blobs = [n for n in names if "/models/blobs/" in n]
    assert blobs and all(n.startswith(("tec_zarr/", "gdal_driver/", "tec_zarr-")) for n in names)
    assert "gdal_driver/tec_driver.cpp" in names  # `tec gdal-plugin` compiles it after a pip install
    for name in SHIPPED:  # every file a shipped manifest lists is in the wheel: its own folder or the blobs
        card = get_card(name)
        for filename, digest in card.files.items():
            assert {f"tec_zarr/models/{name}/{filename}", f"tec_zarr/models/blobs/{digest}"} & set(names), \
                (name, filename)
