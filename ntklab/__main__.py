"""``python -m ntklab ...``: see :mod:`ntklab.cli`."""

from ntklab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
