"""The fixed points of the layout: `platform` stays Python's standard module; the CLI is light."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO_ROOT


def test_no_init_at_source_roots():
    assert not (REPO_ROOT / "platform" / "__init__.py").exists()
    assert not (REPO_ROOT / "plugins" / "__init__.py").exists()
    assert "uisbench" not in sys.stdlib_module_names


def test_import_platform_from_repo_root_is_stdlib():
    # From the repository root, `platform/` is on sys.path first; it must not shadow the stdlib
    # module that torch calls at import.
    code = "import platform, torch; print(platform.system()); print(platform.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    system, path = out.stdout.split()
    assert system == __import__("platform").system()
    assert "site-packages" not in path and not path.startswith(str(REPO_ROOT / "platform"))


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from uisbench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for cmd in ['bench', 'list', 'plugins', 'validate', 'data', 'leaderboard']:\n"
        "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = ('torch', 'timm', 'torchvision', 'scipy', 'pycocotools', 'sklearn', 'numpy', 'PIL', 'matplotlib')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in out.stdout or out.stdout.rstrip().endswith("HEAVY="), out.stdout[-500:]


def test_console_scripts_and_module_entry():
    from pathlib import Path

    # the scripts are installed next to the interpreter running the tests (the package must be
    # installed for the suite to run at all): a missing script is a failure, not a skip
    for script in ("platform", "uisbench"):
        exe = Path(sys.executable).with_name(script)
        assert exe.is_file(), f"console script {script} not installed next to {sys.executable}"
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
        assert out.stdout.startswith("uisbench ")
    out = subprocess.run([sys.executable, "-m", "uisbench", "--version"], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.startswith("uisbench ")
