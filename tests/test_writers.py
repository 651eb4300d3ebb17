"""Every file the program writes goes through ``benchmark/paths.py`` (``write_atomic``, ``swap_in``): the
source is scanned (ast) for any other way to write, rename or link a file, so a new direct writer fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "benchmark"

FILE_METHODS = {"write_text", "write_bytes", "to_parquet", "to_csv", "to_json", "touch", "symlink_to",
                "hardlink_to", "save_pretrained"}
CALLS = {"os.replace", "os.rename", "os.renames", "os.link", "os.symlink", "shutil.move", "shutil.copy",
         "shutil.copy2", "shutil.copyfile", "shutil.copytree", "json.dump", "pickle.dump", "save_file",
         "tempfile.mkstemp", "tempfile.NamedTemporaryFile", "tempfile.TemporaryFile"}
STREAM = {"yaml.dump", "yaml.safe_dump"}  # a writer only when given a stream (else they return the text)
TO_BUFFER = {"torch.save": 1, "savefig": 0, "write_table": 1, "np.save": 0}  # the destination argument's place
BUFFERS = {"BytesIO", "StringIO", "BufferOutputStream"}

# (file, function): why it may write without ``paths`` (keep this short; each entry says why)
ALLOWED = {
    # /proc/self/clear_refs is a kernel control, not a file: writing "5" resets the peak-memory counter
    ("runner/provenance.py", "__enter__"),
    # scratch input batches for the reference child, in a TemporaryDirectory of its own (under no root,
    # removed on exit); the perf harness rewrite owns this function
    ("perf/epochs.py", "time_reference"),
    # transformers writes a model folder (config, weights, tokenizer files) only through save_pretrained; it
    # writes into the export's temp folder, which ``swap_in`` puts in place whole
    ("runner/export.py", "_write_base"),
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _write_mode(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))


def _writes(call: ast.Call, buffers: set[str]) -> bool:
    name = _name(call.func)
    last, method = name.split(".")[-1], isinstance(call.func, ast.Attribute)
    where = TO_BUFFER.get(name, TO_BUFFER.get(last))
    if where is not None:  # allowed into an in-memory buffer only (its bytes then go to write_atomic)
        return not (len(call.args) > where and _name(call.args[where]) in buffers)
    return (name in CALLS or method and last in FILE_METHODS
            or name in STREAM and (len(call.args) > 1 or any(k.arg == "stream" for k in call.keywords))
            or name in ("open", "io.open", "os.fdopen") and _write_mode(call)
            or method and last == "save"  # Tokenizer.save(path) and the like
            or name == "os.open" and _name(call.args[0]) != "os.devnull" and "O_RDONLY" not in ast.unparse(call)
            or method and last in ("rename", "replace") and len(call.args) == 1 and not call.keywords)  # not str's


def direct_writers(package: Path) -> tuple[list[str], set[tuple[str, str]]]:
    """The calls that write outside ``paths.py`` and are not allowed, and the allowed ones met."""
    found, used = [], set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel == "paths.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        buffers = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                   and _name(n.value.func).split(".")[-1] in BUFFERS for t in n.targets if isinstance(t, ast.Name)}
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        owner = {id(c): f.name for f in funcs for c in ast.walk(f)}  # innermost wins: walked outer first
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and _writes(n, buffers)):
            where = (rel, owner.get(id(call), "<module>"))
            if where in ALLOWED:
                used.add(where)
            else:
                found.append(f"{rel}:{call.lineno}: {ast.unparse(call)[:80]}")
    return found, used


def test_every_file_is_written_through_paths():
    found, used = direct_writers(PACKAGE)
    assert found == [], "write these through benchmark/paths.py (write_atomic, swap_in), or say why not here"
    assert used == ALLOWED  # no stale entry


def test_the_scan_sees_each_kind_of_direct_writer(tmp_path):
    pkg = tmp_path / "benchmark"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import io, json, os\nfrom pathlib import Path\n"
        "def f(p, d, fig, torch, tok):\n"
        "    Path(p).write_text('x')\n    open(p, 'w')\n    os.replace(p, d)\n    Path(p).rename(d)\n"
        "    json.dump(d, open(p))\n    torch.save(d, p)\n    fig.savefig(p)\n"
        "    os.open(p, os.O_WRONLY | os.O_CREAT)\n    tok.save(p)\n"
        "def ok(p, d, fig, torch):\n"
        "    open(p).read()\n    'a'.replace('a', 'b')\n    buf = io.BytesIO()\n    torch.save(d, buf)\n"
        "    fig.savefig(buf)\n    os.open(os.devnull, os.O_WRONLY)\n    os.open(p, os.O_RDONLY)\n")
    got = [line.split(":")[1] for line in direct_writers(pkg)[0]]
    assert got == ["4", "5", "6", "7", "8", "9", "10", "11", "12"]
