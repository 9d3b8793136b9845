"""The package's import graph, read from the source (ast; imports inside functions count too): no cycles,
and every import goes to the same layer or one below, in the order of the architecture
(``../shared/DESIGN.md``, "Layers"). The layers are subpackages you can see:

    0 vidtrt.config (configs, request, wire format, specs, tile plans, families) and the small
      utilities at the top (errors, paths, counters, video files, request flags): no torch at import
    1 vidtrt.models, vidtrt.kernels (torch modules, text encoders, kernels)
    2 vidtrt.source (checkpoint folders, embedded presets, ModelSource)
    3 vidtrt.runtime (engines, orchestrator, scheduler, pipeline)
    4 vidtrt.serving, vidtrt.export, vidtrt.model_repository (Triton side, repositories, ONNX)
    5 vidtrt.cli
    client: layer 0 and itself only (a client machine needs no torch)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidtrt"

LAYERS = {
    0: ["vidtrt", "config", "errors", "paths", "counters", "video_io", "cli_args"],
    1: ["models", "kernels", "testing"],
    2: ["source"],
    3: ["runtime"],
    4: ["serving", "export", "model_repository"],
    5: ["cli"],
}
# The top of the package holds the layer subpackages and these few small modules; anything else
# belongs in a layer's subpackage.
TOP_MODULES = {"__init__", "errors", "paths", "counters", "video_io", "cli_args", "testing", "cli"}
CLIENT = "vidtrt.client"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the vidtrt modules it imports (anywhere in the file); parent packages left implicit."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        resolved = set()
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                resolved.add(t)
        graph[name] = resolved
    return graph


def layer_of(module: str) -> int | None:
    if module == "vidtrt":
        return 0
    top = module.split(".")[1]
    return next((n for n, names in LAYERS.items() if top in names), None)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_graph_reads_imports_of_every_kind():
    """The reader sees top-level, lazy (inside a function) and relative imports, so the tests below can fail."""
    graph = import_graph()
    assert "vidtrt.errors" in graph["vidtrt.config.model_config"]  # top level
    assert "vidtrt.kernels.backends" in graph["vidtrt.models.attention"]  # inside check_backend
    assert "vidtrt.kernels.attention" in graph["vidtrt.kernels.attention_fp8"]  # relative
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if not m.startswith(CLIENT) and layer_of(m) is None] == []


def test_imports_follow_the_layers():
    bad = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
           for m, targets in import_graph().items() if not m.startswith(CLIENT)
           for t in targets if not t.startswith(CLIENT) and layer_of(t) > layer_of(m)]  # fmt: skip
    assert bad == []


def test_client_needs_only_layer_0():
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if m.startswith(CLIENT)
           for t in targets if not t.startswith(CLIENT) and layer_of(t) != 0]  # fmt: skip
    assert bad == []


def test_top_level_holds_only_layer_packages_and_utilities():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {n for names in LAYERS.values() for n in names if (PACKAGE / n / "__init__.py").exists()
                        } | {"client"}
    assert {p.stem for p in PACKAGE.glob("*.py")} == TOP_MODULES


LAYER_0_MODULES = sorted(m for m in _modules() if m != CLIENT and not m.startswith(CLIENT + ".")
                         and layer_of(m) == 0)


@pytest.mark.parametrize("module", LAYER_0_MODULES)
def test_layer_0_imports_no_torch_at_import(module):
    path = _modules()[module]
    top = ast.parse(path.read_text()).body  # module-level statements only (not functions, not TYPE_CHECKING)
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert "torch" not in names
