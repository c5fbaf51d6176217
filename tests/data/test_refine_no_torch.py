"""The data pipeline never imports torch (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_data_pipeline_does_not_import_torch():
    code = (
        "import sys, pkgutil, importlib, falconlm.data as d\n"
        "mods = [m.name for m in pkgutil.walk_packages(d.__path__, 'falconlm.data.') if '.dedup' not in m.name]\n"
        "for m in mods: importlib.import_module(m)\n"
        "from falconlm.data.config import RefineConfig\n"
        "from falconlm.data.recipes import build_recipe\n"
        "build_recipe('refinedweb', RefineConfig())[0].build_steps()\n"
        "import falconlm.cli; falconlm.cli.build_parser('refine')\n"
        "assert len(mods) >= 12, mods\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
