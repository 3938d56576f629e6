"""What every command line shares: bad input is one line starting "error: " on stderr, exit code 2.

Imports nothing of this project, so the dataset builders, data.py and every script can use it.
"""
import argparse
import os
import sys


class DataError(ValueError):
    """Bad input data; its message is one line naming the file (and task, row or key) and fault."""


class OneLineParser(argparse.ArgumentParser):
    """argparse answering a bad command line in one line (argparse's own adds the usage), exit 2."""

    def error(self, message):
        print(f"error: {message} (see python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def one_line_errors(main, *args):
    """Run a command's main(*args) -> exit code: a DataError, an OSError or a SystemExit("error:
    ...") is printed as its one line on stderr with exit code 2 (no traceback), Ctrl-C as one line
    with 130."""
    try:
        main(*args)
        return 0
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:  # read-only folder, disk full: builds removed their files
        where = str(e.filename).replace(f".tmp-{os.getpid()}", "")  # the user's path, not the temp
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 2
