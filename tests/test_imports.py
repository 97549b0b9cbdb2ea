"""The modules of ahri_core import each other without a cycle, counting imports inside functions too.

A cycle hidden in a function-level ("lazy") import still ties two modules together: neither can be
understood, tested or moved without the other, and the first caller that imports them in the other
order at module level gets a half-initialised module. Imports under ``if TYPE_CHECKING:`` never run
and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ahri_core

ROOT = Path(ahri_core.__file__).resolve().parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__.py)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = f
    return out


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth (functions, classes, try blocks), except TYPE_CHECKING ones."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (module level or inside functions)."""
    mods = module_names(root, package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]  # the package relative imports start from
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)  # `from pkg import submodule` or a name
            for t in targets:
                # `import a.b.c` needs a.b.c; a name that is not a module file belongs to its closest module
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None. Iterative depth-first search (white / grey / black)."""
    state = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    for start in sorted(graph):
        if state[start]:
            continue
        path = [start]
        its = [iter(sorted(graph[start]))]
        state[start] = 1
        while its:
            nxt = next(its[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                its.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                its.append(iter(sorted(graph[nxt])))
    return None


def test_ahri_core_has_no_import_cycle():
    graph = import_graph(ROOT, "ahri_core")
    assert len(graph) > 20 and "ahri_core.eval.evaluate" in graph and "ahri_core.sources.game.render" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_inference_never_imports_evaluation():
    """Layers: eval scores what inference makes; inference (world model, sampler) never needs eval's code.

    Both draw frames and scores from the shared picture and metric modules."""
    graph = import_graph(ROOT, "ahri_core")
    inference = [m for m in graph if m.startswith("ahri_core.inference")]
    assert {"ahri_core.inference.world", "ahri_core.inference.rollout", "ahri_core.inference.sampler"} <= set(inference)
    for m in inference:
        bad = {t for t in graph[m] if t.startswith("ahri_core.eval") and t != "ahri_core.eval.metrics"}
        assert not bad, f"{m} imports {bad}"
    assert {"ahri_core.eval.metrics", "ahri_core.visual"} <= graph["ahri_core.eval.evaluate"]
    assert {"ahri_core.eval.metrics", "ahri_core.visual"} <= graph["ahri_core.inference.rollout"]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(
    "files",
    [
        # a lazy import inside a function closes the loop
        {"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"},
        # absolute import in a function; a package-relative import in a method
        {"a.py": "def g():\n    import pkg.sub.b\n", "sub/b.py": "class C:\n    def m(self):\n        from .. import a\n"},
        # an import guarded by try in a function, two levels up
        {"a.py": "from .sub.b import y\n", "sub/b.py": "def h():\n    try:\n        from ..a import z\n    except ImportError:\n        pass\n"},
    ],
)
def test_the_checker_sees_lazy_cycles(tmp_path, files):
    root = _write(tmp_path, {"__init__.py": "", "sub/__init__.py": "", **files})
    cycle = find_cycle(import_graph(root, "pkg"))
    assert cycle is not None and cycle[0] == cycle[-1] and "pkg.a" in cycle


def test_the_checker_ignores_type_checking_imports_and_accepts_a_tree(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .b import x\nfrom . import c\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\nx = 1\n",
            "c.py": "def f():\n    from .b import x\n    import os\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b", "pkg.c"}, "pkg.b": set(), "pkg.c": {"pkg.b"}}
    assert find_cycle(graph) is None
