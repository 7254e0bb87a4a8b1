"""The codebase keeps its shape: packages import only upstream, functions fit in one view, one home per contract."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "floranet"
# The flow, upstream first; a module may import from its own layer and the layers before it.
LAYERS = [
    {"errors"},
    {"utils"},
    {"config"},
    {"data"},
    {"rundir"},
    {"models"},
    {"inference"},
    {"training"},
    {"evaluation"},
    {"serving", "export"},
    {"workflows"},
    {"cli"},
]
MAX_FUNCTION_BODY = 60
MAX_FILE_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _layer(module: str) -> int | None:
    """Layer index of ``floranet.<part>...`` (None for the package root, which only loads others lazily)."""
    parts = module.split(".")
    if parts[0] != "floranet" or len(parts) == 1 or parts[1] == "__init__":
        return None
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if node.module == "floranet" else node.module for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, n) for line, n in found if n.split(".")[0] == "floranet"]


def test_every_module_imports_only_from_upstream() -> None:
    wrong = []
    for path in _modules():
        rel = path.relative_to(SRC.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own is None:
            continue
        for line, name in _imports(path):
            if name == "floranet.__version__":
                continue
            theirs = _layer(name)
            if theirs is not None and theirs > own:
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {name}")
    assert not wrong, "downstream imports:\n" + "\n".join(wrong)


def test_every_package_is_in_the_flow() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    assert packages | modules == set().union(*LAYERS)


def _function_lengths() -> list[tuple[int, str]]:
    out = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                first = body[1] if has_doc and len(body) > 1 else body[0]
                assert node.end_lineno is not None
                out.append((node.end_lineno - first.lineno + 1, f"{path.relative_to(SRC)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def test_functions_fit_in_one_view() -> None:
    long = [f"{n} lines: {where}" for n, where in _function_lengths() if n > MAX_FUNCTION_BODY]
    assert not long, f"function bodies over {MAX_FUNCTION_BODY} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_files_are_readable_in_one_sitting(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_FILE_LINES


def test_run_directory_file_names_live_in_rundir() -> None:
    names = [
        '"model.keras"',
        '"class_names.json"',
        '"config.yaml"',
        '"split.csv"',
        '"calibration.json"',
        '"metrics.json"',
        '"state.json"',
        '"history.csv"',
        '"doctor.json"',
    ]
    where = {n: [p.relative_to(SRC) for p in _modules() if n in p.read_text(encoding="utf-8")] for n in names}
    assert where == {n: [Path("rundir/__init__.py")] for n in names}


def test_work_is_sized_by_the_cpus_this_process_may_use() -> None:
    """Thread and actor counts come from utils.system.usable_cpus (affinity, cgroup quota): os.cpu_count() counts
    the machine's cores, so under `taskset` or a container's CPU limit the doctor, predict's decode threads and the
    server's decode pool asked for cores the process does not get (Ray's local instance did too)."""
    calls = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in _modules()
        if path.name != "system.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.cpu_count"
    ]
    assert not calls, f"os.cpu_count() sizes work here; use floranet.utils.system.usable_cpus(): {calls}"


def test_the_package_never_imports_torch() -> None:
    """torch is a dev-only dependency of scripts/convert_mobilenet_v2.py; the shipped weights need none of it."""
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [
                f"{path.relative_to(SRC)}:{node.lineno}" for n in names if n.split(".")[0] in ("torch", "torchvision")
            ]
    assert not found, f"torch imported by the package: {found}"


@pytest.mark.parametrize(("argv", "code"), [(["backbones"], 0), (["evaluate", "/nonexistent/run"], 2)])
def test_console_script_ends_fast_with_its_code_output_and_exit_handlers(argv: list[str], code: int) -> None:
    """After a command that loaded OpenVINO, the console script ends without the interpreter's teardown, yet
    with the command's exit code, all its output (a pipe is block-buffered) and the exit handlers run."""
    import subprocess
    import sys

    script = (
        "import atexit, sys, openvino\n"
        "import floranet.cli as cli\n"
        f"sys.argv = ['floranet', *{argv!r}]\n"
        "command = cli.main\n"
        "def main():\n"  # a handler the command registers (as Ray or MLflow would) runs before the fast exit
        "    atexit.register(lambda: print('handler ran'))\n"
        "    return command()\n"
        "cli.main = main\n"
        "class Teardown:\n"  # says so when the interpreter tears down the module (it should not get there)
        "    def __del__(self): print('torn down')\n"
        "kept = Teardown()\n"
        "cli.console_main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stdout.rstrip().endswith("handler ran") and "torn down" not in done.stdout
    if code == 0:
        assert "resnet50" in done.stdout
    else:
        assert "Run directory not found" in done.stderr
