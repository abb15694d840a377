"""The ``platform`` / ``uisbench`` command: a small dispatcher over one module per sub-command.

Each sub-command module defines ``add_parser(subparsers, common)`` and ``run(args) -> int`` and
imports nothing heavy at module level, so ``platform --help`` never loads torch.

Exit codes (also in ``platform --help``), so scripts can tell what went wrong:

- 0: success;
- 1: the command ran but reports failures: a bench cell failed (the others ran; see results.json),
  or ``validate`` found problems;
- 2: usage or configuration error: a bad option, registry entry or plugin (``ConfigError``,
  ``PluginError`` and the other :class:`uisbench.UisbenchError`), or no command given;
- 3: data error: a dataset, image or weights file is missing, corrupt or refused
  (:class:`uisbench.DataError`);
- 130: interrupted (Ctrl-C); finished work is kept.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import ConfigError, DataError, UisbenchError

#: Sub-command modules, in help order. A new sub-command is one new module plus its name here.
COMMANDS = ("plugins", "list", "validate", "data", "bench", "leaderboard", "weights", "new-plugin")

#: Exit codes of `main` (1, "failures reported", is returned by the commands themselves).
EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 2, 3, 130

_EPILOG = """\
Run `platform COMMAND --help` for the options of a command.

exit codes:
  0    success
  1    the command ran but reports failures (a bench cell failed, validate found problems)
  2    usage or configuration error (option, registry, plugin; a work directory without room)
  3    data error (a dataset, image or weights file is missing, corrupt or refused)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP); finished work is kept
"""


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="FILE",
        help="extra registry file that extends or overrides the shipped registry.yaml (repeatable)",
    )
    common.add_argument(
        "--strict-plugins",
        action="store_true",
        default=None,
        help="fail when a plugin cannot load (default: warn and skip it; env UISBENCH_STRICT_PLUGINS=1)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platform",
        description="uisbench: score self-supervised backbones on unsupervised instance segmentation.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"uisbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_options()
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}_cmd")
        module.add_parser(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.run(args) or 0)
    except ConfigError as err:
        print("error: " + "\n".join(err.problems) if len(err.problems) > 1 else f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DATA
    except UisbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `platform plugins | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished work is saved, rerun the same command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
