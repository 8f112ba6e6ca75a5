"""The architecture holds: import layers and torch-free planning (import-linter, pyproject.toml), no
import cycles (inner imports included), each import inside a function saying why it is there, and no
function body over 50 lines outside the kernels."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in (ROOT / "ttsplan").rglob("*.py") if not p.is_symlink()) + [ROOT / "cli.py"]
MAX_BODY_LINES = 50


def module_name(path: Path) -> str:
    if path.name == "cli.py" and path.parent == ROOT:
        return "ttsplan.cli"
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.AST) -> list[tuple[str, ast.stmt]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(f"{node.module}.{a.name}", node) for a in node.names] + [(node.module, node)]
    return out


def inner_imports(tree: ast.AST) -> list[ast.stmt]:
    return [sub for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for sub in ast.walk(fn) if isinstance(sub, (ast.Import, ast.ImportFrom))]


def test_import_contracts():
    proc = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_no_import_cycles():
    modules = {module_name(p): ast.parse(p.read_text()) for p in SOURCES}
    graph = {m: {name for name, _ in imports_of(tree) if name in modules and name != m} for m, tree in modules.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while not scc or scc[-1] != v:
                scc.append(stack.pop()), on_stack.discard(scc[-1])
            if len(scc) > 1:
                cycles.append(sorted(scc))
    for m in graph:
        if m not in index:
            visit(m)
    assert not cycles, cycles


def test_inner_imports_say_why():
    bad = []
    for path in SOURCES:
        text = path.read_text()
        lines = text.splitlines()
        for node in inner_imports(ast.parse(text)):
            i = node.lineno - 1  # the reason sits on the first line of a run of imports
            while i > 0 and "#" not in lines[i] and lines[i - 1].strip().startswith(("import ", "from ")):
                i -= 1
            if "#" not in lines[i]:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "an import inside a function needs a one-line reason:\n" + "\n".join(bad)


def test_functions_are_short():
    long = []
    for path in SOURCES:
        if "kernels" in path.parts:
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) \
                    else fn.body
                if body and body[-1].end_lineno - body[0].lineno + 1 > MAX_BODY_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}")
    assert not long, long


def test_importing_the_cli_leaves_triton_unimported():
    """Importing transformers' tokenizers imports Triton; once imported, Triton's interpreter (the
    kernels' tests on a CPU) can no longer be switched on, and the CLI starts a second slower."""
    proc = subprocess.run([sys.executable, "-c", "import sys, ttsplan.cli; print('triton' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
