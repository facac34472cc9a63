"""The `marsrm` command: parses a config, calls the library, prints.

One error boundary (`main`): a failure caused by the user's files, paths, disk or settings ends in one line
naming the file, exit 2; an interrupt, exit 130; a bug in marsrm, exit 1 and how to report it. `--debug` adds
the traceback.
"""
from __future__ import annotations

import argparse
import errno
import sys
import traceback

from marsrm import __version__
from marsrm.config import ConfigError, build_parser, resolve

# What would fix an OSError, by its errno (the rest say only what went wrong).
_FIXES = {
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "free some of your disk quota or write elsewhere",
    errno.EACCES: "check the permissions, or use another path",
    errno.EPERM: "check the permissions, or use another path",
    errno.EROFS: "write to a disk that is not read-only",
    errno.ENOTDIR: "one part of the path is a file; choose another path",
    errno.EISDIR: "give the path of a file, not of a folder",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a user's files, paths, disk or settings cause (OSError: every file and disk failure;
    ConfigError: PoolError too)."""
    import yaml

    from marsrm.data import DataError
    from marsrm.model import ModelError

    errors = [ConfigError, DataError, ModelError, OSError, UnicodeError, yaml.YAMLError]
    try:
        from safetensors import SafetensorError  # a weights file that is cut short or not safetensors
        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _message(error: BaseException) -> str:
    """A user error as one line; an OSError says which file (and, for a rename, which two) and what would fix it."""
    if isinstance(error, OSError) and error.strerror:
        names = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
        text = f"{names}: {error.strerror}" if names else error.strerror
        if error.errno in _FIXES:
            text += f"; {_FIXES[error.errno]}"
        return _one_line(text)
    return _one_line(str(error)) or type(error).__name__


def _commands():
    from marsrm.commands import COMMANDS, command

    return {name: command(name) for name in COMMANDS}


class _Parser(argparse.ArgumentParser):
    """argparse's own refusals (an unknown flag, a flag without its value) as the same one line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status: 0 done, 1 a bug in marsrm, 2 a user error, 130 interrupted."""
    parser = _Parser(prog="marsrm", description="Reward models trained with margin-aware data augmentation (MARS).")
    parser.add_argument("--version", action="version", version=f"marsrm {__version__}")
    debug_help = "on an error, print the traceback too"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    commands, parsers = _commands(), {}
    for name, (cls, _, help_text) in commands.items():
        parsers[name] = build_parser(cls, sub.add_parser(name, help=help_text, description=cls.__doc__))
        # also after the command; SUPPRESS keeps `marsrm --debug train` from being reset to False
        parsers[name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # refused by the command's own parser, so the line names the command
            parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as stop:  # --help, --version, or a refusal already printed
        return stop.code if isinstance(stop.code, int) else 2
    cls, run, _ = commands[args.command]
    prefix = f"marsrm {args.command}"
    try:
        run(resolve(cls, args), echo=print)
    except (Exception, KeyboardInterrupt) as error:
        if args.debug:
            traceback.print_exc()
        if isinstance(error, KeyboardInterrupt):  # each command has saved what it can on the way out
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        if isinstance(error, _user_errors()):
            print(f"{prefix}: error: {_message(error)}", file=sys.stderr)
            return 2
        print(f"{prefix}: internal error in marsrm ({type(error).__name__}: {_message(error)}); this is a bug: "
              "rerun the command with --debug and report it with the output of --debug", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
