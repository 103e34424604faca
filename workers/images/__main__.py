"""``python -m workers.images build|list``: see workers/images/build.py."""

from __future__ import annotations

import sys

from workers.images.build import main

if __name__ == "__main__":
    sys.exit(main())
