"""The ``pageserver`` command line.

:func:`main` is the one place that turns what can interrupt *any* command into one line on
stderr and an exit status, never a traceback:

* stdout closed by its reader (``pageserver layer dump FILE | head``): exit 1, silently
  (stdout is pointed at ``/dev/null`` so that the interpreter's final flush cannot fail
  again);
* Ctrl-C (``KeyboardInterrupt``): ``pageserver: interrupted``, exit 1 (like every other
  failure of a command, as the CLI issue asks; ``run`` still exits 0 on SIGINT, a clean
  stop); output still buffered for a pipe is dropped, so that the exit cannot
  block on a reader that stopped reading;
* an ``OSError`` nobody handled (a data dir that cannot be created, a permission denied):
  ``pageserver: error: <what> (<path>)``, exit 1.

All three are also recognised inside an exception group (a trio nursery wraps what its
tasks raise). Commands handle their own expected errors (a refused connection, a bad file)
with their own one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import stat
import sys
from collections.abc import Callable, Sequence

from pageserver.config import DEFAULT_DATA_DIR, ConfigError
from pageserver.logging import configure_logging

#: Modules that add their own subcommands with ``register(subparsers)``.
_SUBCOMMAND_MODULES = (
    "pageserver.layers.cli",
    "pageserver.client.cli",
    "pageserver.bench.harness",
    "pageserver.testing.compare",
)


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
        "-D", "--data-dir", type=_data_dir, default=DEFAULT_DATA_DIR,
        help=f"data directory (default {DEFAULT_DATA_DIR})",
    )  # fmt: skip
    # Also after ``run`` (``pageserver run -D DIR --log-format json``, as SPEC section 2
    # writes it); SUPPRESS keeps the top-level value when it is not given here.
    run.add_argument(
        "--log-format", choices=("kv", "json"), default=argparse.SUPPRESS,
        help="log line format (stderr); also accepted before COMMAND",
    )  # fmt: skip
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


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null: the reader is gone, and the interpreter's last flush of
    ``sys.stdout`` must not raise (and print "Exception ignored ...") again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (tests capture it): nothing will flush to a closed pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _stdout_is_a_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def _os_error_line(e: OSError) -> str:
    what = e.strerror or str(e)
    if e.filename is not None:
        return f"{what} ({os.fsdecode(e.filename)})"
    return what


def _data_dir(text: str) -> str:
    """``-D``: an empty path would be the current directory (``run`` wrote its
    pageserver.toml and tenants/ there)."""
    if not text:
        raise argparse.ArgumentTypeError("the data directory must not be empty (use . for this one)")
    return text


def _exit_status(exc: BaseException) -> int | None:
    """The exit status for an exception that may end any command, or None (not ours)."""
    leaves = _leaves(exc)
    if any(isinstance(e, KeyboardInterrupt) for e in leaves):
        _say("pageserver: interrupted")
        if _stdout_is_a_pipe():
            # What is still buffered would be flushed at exit into a pipe that may be full
            # (the reader stopped reading: that is often why Ctrl-C was pressed): drop it.
            _silence_stdout()
        return 1
    if all(isinstance(e, BrokenPipeError) for e in leaves):
        _silence_stdout()
        return 1
    if all(isinstance(e, OSError) for e in leaves):
        first = leaves[0]
        assert isinstance(first, OSError)
        _say(f"pageserver: error: {_os_error_line(first)}")
        return 1
    if all(_from_an_argument(e) for e in leaves):
        _say(f"pageserver: error: an argument is not valid text ({leaves[0]})")
        return 1
    return None


def _from_an_argument(e: BaseException) -> bool:
    """Whether ``e`` is the encoding error of an argument that is not UTF-8: the shell
    passes bytes, and Python keeps the invalid ones as lone surrogates, which text sent to
    the server (an image, a token, a config key) cannot be encoded with, nor a host name
    for the resolver (its ``idna`` codec). Any other UnicodeError (a bug) keeps its
    traceback."""
    if isinstance(e, UnicodeEncodeError):
        return e.reason == "surrogates not allowed"
    return type(e) is UnicodeError and "idna" in str(e) and "\\udc" in ascii(str(e))


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass  # stderr is gone too: the exit status says it


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        configure_logging(args.log_format)
        func: Callable[[argparse.Namespace], int] = args.func
        status = func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return status
    except SystemExit:
        # --help, usage errors: what argparse printed must reach a closed pipe quietly too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
        raise
    except BaseException as e:
        mapped = _exit_status(e)
        if mapped is None:
            raise
        return mapped


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
