"""The ``inferwatch`` command: without the extra a command needs, it says which to install."""

import sys

from inferwatch.extras import EXTRA_OF, MissingExtra, install_hint


def main() -> None:
    try:
        from inferwatch.cli import app

        app()
    except MissingExtra as exc:
        sys.exit(f"inferwatch: {exc}")
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in EXTRA_OF:
            raise
        sys.exit(f"inferwatch: {install_hint(exc.name)}")


if __name__ == "__main__":
    main()
