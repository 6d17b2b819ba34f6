"""Up-front checks of path arguments, shared by the scripts in examples/, conversion/ and bench/: a bad path stops the
script in argparse, naming the option and the path, before any work starts."""

import argparse
import os
from pathlib import Path


def check_folder(parser: argparse.ArgumentParser, option: str, path, hint: str, required_file: str | None = None):
    """`parser.error` unless `path` is a folder (holding `required_file`, when given); `hint` says what to pass."""
    path = Path(path)
    if not path.is_dir():
        problem = "not a folder" if path.exists() else "no such folder"
    elif required_file is not None and not (path / required_file).is_file():
        problem = f"a folder without {required_file}"
    else:
        return
    parser.error(f"{option} {path}: {problem}; {hint}")


def check_output_folder(parser: argparse.ArgumentParser, option: str, path):
    """`parser.error` unless `path` is a folder, or can be created as one, that this user can write to."""
    path = Path(path)
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        parser.error(f"{option} {path}: {existing} is a file, not a folder; pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{option} {path}: {existing} is not writable; pass a folder you can write to")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends "(default: …)" to options whose default is a value."""

    def _get_help_string(self, action):
        no_value = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if action.help is None or no_value or "%(default)" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"
