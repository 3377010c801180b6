import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import srf_upsample


def _run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and return what it printed, stripped."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_public_names_are_pinned():
    # Pins the public surface: removing or renaming a public name must be a deliberate change of this file.
    pinned = json.loads((Path(__file__).parent / "api_surface.json").read_text())
    assert sorted(srf_upsample.__all__) == pinned
    for name in pinned:
        assert hasattr(srf_upsample, name), name


def test_import_needs_no_training_or_export_extras():
    code = (
        "import sys, srf_upsample; "
        "extras = ('pycocotools', 'matplotlib', 'onnx', 'onnxruntime', 'torchvision.models.detection'); "
        "bad = [m for m in extras if m in sys.modules]; "
        "print(bad)"
    )
    assert _run_python(code) == "[]"


def test_issue_command_prints_the_requested_shape():
    code = (
        "from srf_upsample import SRFUpsample; import torch; "
        "print(SRFUpsample()(torch.randn(1,256,17,25), size=(33,49)).shape)"
    )
    assert _run_python(code) == "torch.Size([1, 256, 33, 49])"


def test_cli_lists_commands():
    from srf_upsample.cli import main

    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == 2


def test_integrations_import_only_public_names():
    # Integrations are written as outside code would be: a private module or name they import is a surface that
    # patch/ cannot change freely. Public names come from the package root or a subpackage's __all__.
    root = Path(srf_upsample.__file__).parent
    private = []
    for path in sorted((root / "integrations").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("srf_upsample")):
                module = node.module or ""
                names = [alias.name for alias in node.names]
                if any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names):
                    private.append(f"{path.name}:{node.lineno} from {'.' * node.level}{module} import {names}")
                for name in names:
                    package = importlib.import_module(
                        importlib.util.resolve_name("." * node.level + module, "srf_upsample.integrations")
                    )
                    if hasattr(package, "__all__") and name not in package.__all__:
                        private.append(f"{path.name}:{node.lineno} {name} is not in {package.__name__}.__all__")
    assert private == []


def test_every_module_imports_without_the_optional_extras():
    # The doctests (--doctest-modules) import every module of the package at collection: an extra imported at module
    # level would break the test run of a user without it. Extras must be imported where they are used.
    code = (
        "import sys, importlib, pkgutil\n"
        "for name in ('onnx', 'onnxscript', 'onnxruntime', 'ultralytics', 'pycocotools', 'matplotlib'):\n"
        "    sys.modules[name] = None  # import raises ImportError\n"
        "import srf_upsample\n"
        "failed = []\n"
        "for module in pkgutil.walk_packages(srf_upsample.__path__, 'srf_upsample.'):\n"
        "    if module.name.rsplit('.', 1)[-1] != '__main__':\n"
        "        try:\n"
        "            importlib.import_module(module.name)\n"
        "        except ImportError as error:\n"
        "            failed.append(f'{module.name}: {error}')\n"
        "print(failed)\n"
    )
    assert _run_python(code) == "[]"
