"""The algorithm core is pure torch: importing it loads neither Ray, vLLM nor DeepSpeed."""

import ast
import subprocess
import sys
from pathlib import Path

import rlhf_dist.algorithms

FORBIDDEN = {"ray", "vllm", "deepspeed", "actors", "launch"}
CORE_DIR = Path(rlhf_dist.algorithms.__file__).parent


def test_core_sources_import_nothing_forbidden():
    offenders = []
    for path in CORE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_importing_core_loads_no_forbidden_module():
    code = (
        "import sys, rlhf_dist.algorithms, rlhf_dist.experience;"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & %r)))" % FORBIDDEN
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the core pulled in: {out.stdout.strip()}"


def test_library_never_imports_actors_or_launch():
    library = CORE_DIR.parent
    offenders = []
    for path in library.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {"actors", "launch"}:
                offenders.append(f"{path}: {node.module}")
            if isinstance(node, ast.Import):
                offenders += [f"{path}: {a.name}" for a in node.names if a.name.split(".")[0] in {"actors", "launch"}]
    assert not offenders, offenders
