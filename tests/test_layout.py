"""The package's shape: its modules import each other in layers, never in a circle,
and no function is too long to hold in one's head."""

import ast
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "alexnet_tf")
TOOLS = os.path.join(REPO, "tools")
MAX_FUNCTION_LINES = 80
# A module longer than this says in its docstring why it is one job ("One job: ...").
MAX_MODULE_LINES = 600


def modules():
    return {os.path.basename(path)[:-3]: path
            for path in glob.glob(os.path.join(PACKAGE, "*.py"))}


def package_imports(path, names):
    """The package's modules a file imports, at module level or inside functions alike."""
    imported = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "alexnet_tf":
                imported.update(alias.name for alias in node.names if alias.name in names)
            elif node.module.startswith("alexnet_tf."):
                imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[1] for alias in node.names
                            if alias.name.startswith("alexnet_tf."))
    return imported


def find_cycle(graph):
    """A list of modules that import each other in a circle, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_the_package_imports_itself_in_a_circle():
    found = modules()
    graph = {name: package_imports(path, found) - {name} for name, path in found.items()}
    assert graph["trainer"] and graph["export"]  # the walk sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def function_lengths(path):
    """(name, lines without the docstring) of every function in a file."""
    lengths = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            body = node.body[0]
            if isinstance(body, ast.Expr) and isinstance(body.value, ast.Constant) and isinstance(
                    body.value.value, str):
                lines -= body.end_lineno - body.lineno + 1
            lengths.append((f"{os.path.basename(path)}:{node.name}", lines))
    return lengths


def test_no_function_of_the_package_or_its_tools_is_longer_than_80_lines():
    paths = list(modules().values()) + glob.glob(os.path.join(TOOLS, "*.py"))
    lengths = [entry for path in paths for entry in function_lengths(path)]
    assert len(lengths) > 100 and any(name.startswith("bench_peer.py:") for name, _ in lengths)
    too_long = [(name, lines) for name, lines in lengths if lines > MAX_FUNCTION_LINES]
    assert not too_long


def test_a_module_over_600_lines_says_why_it_is_one_job():
    long = {}
    for name, path in modules().items():
        with open(path) as f:
            text = f.read()
        if text.count("\n") > MAX_MODULE_LINES:
            long[name] = "One job:" in (ast.get_docstring(ast.parse(text)) or "")
    assert long and not [name for name, says in long.items() if not says], long
