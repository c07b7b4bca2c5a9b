"""``python -m reid.data.synthetic``: run the command line; a config error exits with its message."""

import sys

from reid.data.synthetic.cli import main
from reid.errors import ConfigError

if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
