"""The package's import graph, read from the source (ast; imports inside functions count too): no cycles,
and every import goes to the same layer or one below, in the order of the architecture
(``../shared/DESIGN.md``, "Layers"):

    0 config, request, specs, wire format, tile plans, video files (no torch at import)
    1 torch modules and kernels              2 checkpoint sources, embedded presets
    3 runtime: engines, orchestrator, pipeline     4 serving and export: Triton side, repositories, ONNX
    5 the CLI
    client: layer 0 and itself only (a client machine needs no torch)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidtrt"

LAYERS = {
    0: ["vidtrt", "errors", "configs", "request", "request_io", "specs", "tiling", "cli_args", "video_io",
        "components", "paths", "lifecycle"],
    1: ["models", "kernels", "text_encoders", "testing", "scheduler"],
    2: ["checkpoints", "embedded", "tiny"],
    3: ["engines", "engine_components", "pipeline", "orchestrator"],
    4: ["component_io", "server", "export", "model_repository"],
    5: ["cli"],
}
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
    assert "vidtrt.errors" in graph["vidtrt.configs"]  # top level
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


@pytest.mark.parametrize("module", LAYERS[0])
def test_layer_0_imports_no_torch_at_import(module):
    path = _modules()["vidtrt" if module == "vidtrt" else f"vidtrt.{module}"]
    top = ast.parse(path.read_text()).body  # module-level statements only (not functions, not TYPE_CHECKING)
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert "torch" not in names
