"""The ``pageserver`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from pageserver.config import DEFAULT_DATA_DIR, ConfigError
from pageserver.logging import configure_logging

#: Modules that add their own subcommands with ``register(subparsers)``.
_SUBCOMMAND_MODULES = ("pageserver.layers.cli", "pageserver.client.cli", "pageserver.bench.harness")


def _cmd_run(args: argparse.Namespace) -> int:
    from pageserver import daemon
    from pageserver.io import EngineUnavailable

    try:
        return daemon.run(args.data_dir)
    except (ConfigError, EngineUnavailable) as e:
        print(f"pageserver: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pageserver",
        description=(
            "A small Neon-style pageserver: ingests versioned key/value records over a "
            "socket, keeps them in an in-memory layer and writes Neon-compatible delta and "
            "image layer files."
        ),
    )
    parser.add_argument(
        "--log-format", choices=("kv", "json"), default="kv", help="log line format (stderr)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser(
        "run",
        help="run the daemon",
        description="Run the daemon on DIR (created with a default pageserver.toml if missing). "
        "SIGINT/SIGTERM stop it cleanly.",
    )
    run.add_argument(
        "-D", "--data-dir", default=DEFAULT_DATA_DIR, help=f"data directory (default {DEFAULT_DATA_DIR})"
    )
    run.set_defaults(func=_cmd_run)
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
