"""The layout the README describes: imports between marsrm's modules run one way (no cycles, even through
imports inside functions), the library never imports the command line or the commands, each command lives in
commands/, and a module over 450 lines says why."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "marsrm"


def module_name(path: Path) -> str:
    parts = ("marsrm", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """{module: the marsrm modules it imports, anywhere in its body}."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                       [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules():
    graph = imports()
    assert len(graph) > 30
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


def test_the_library_never_imports_the_command_line():
    graph = imports()
    assert [m for m, deps in graph.items() if "marsrm.cli" in deps and m != "marsrm.__main__"] == []


def test_the_library_never_imports_the_commands():
    graph = imports()
    library = {m for m in graph if not m.startswith("marsrm.commands") and m not in ("marsrm.cli", "marsrm.__main__")}
    assert len(library) > 25 and any(m.startswith("marsrm.commands.") for m in graph)
    assert {m: sorted(d for d in graph[m] if d.startswith("marsrm.commands")) for m in library
            if any(d.startswith("marsrm.commands") for d in graph[m])} == {}


def test_every_command_has_its_config_and_function_in_commands():
    from marsrm.commands import COMMANDS, command

    for name in COMMANDS:
        config_cls, function, _ = command(name)
        assert config_cls.__module__ == function.__module__ == f"marsrm.commands.{COMMANDS[name][0]}"
        assert config_cls.__name__.endswith("Config") and callable(function)


def test_a_long_module_says_why_in_its_docstring():
    long = {}
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 450:
            doc = ast.get_docstring(ast.parse(text)) or ""
            long[module_name(path)] = "Long because" in doc
    assert long and all(long.values()), [m for m, ok in long.items() if not ok]
