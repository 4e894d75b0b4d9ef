"""The ``inferwatch`` command: without the extra a command needs, it says which to install."""

import sys

from inferwatch.extras import MissingExtra


def main() -> None:
    try:
        from inferwatch.cli import app
    except ModuleNotFoundError as exc:  # typer and rich come with every extra
        sys.exit(f"inferwatch: {exc.name} is missing: the commands need an extra, e.g. "
                 "pip install 'inferwatch[demo]'")
    try:
        app()
    except MissingExtra as exc:
        sys.exit(f"inferwatch: {exc}")


if __name__ == "__main__":
    main()
