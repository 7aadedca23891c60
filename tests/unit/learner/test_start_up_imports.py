"""A learner rank's start-up does not pay for TorchInductor: DeepSpeed's ZeRO optimizer check imports
its Muon module, whose kernels are `torch.compile`-decorated at import (rlhf_dist/learner/engine.py
`import_muon_uncompiled`). In a fresh process, so that nothing else has imported Inductor first."""

import subprocess
import sys

CODE = """
import os, sys
os.environ["DS_ACCELERATOR"] = "cpu"
from rlhf_dist.learner.engine import MUON_MODULE, import_muon_uncompiled
import_muon_uncompiled()
print(MUON_MODULE in sys.modules, "torch._inductor.compile_fx" in sys.modules, os.environ.get("TORCHDYNAMO_DISABLE"))
"""


def test_the_muon_module_is_imported_without_inductor_and_the_switch_is_put_back():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # Muon imported, Inductor not, and TORCHDYNAMO_DISABLE unset again (later torch.compile calls work).
    assert out.stdout.strip().splitlines()[-1] == "True False None", out.stdout
