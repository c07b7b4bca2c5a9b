"""``python -m reid.core.data.synthetic``: run the command line; a config error exits with its message."""

import sys

from reid.core.data.synthetic.cli import main
from reid.core.errors import ConfigError

if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
