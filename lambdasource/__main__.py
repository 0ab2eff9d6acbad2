"""``python -m lambdasource``: the same as the ``lambdasource`` console script."""

import sys

from .cli import main

sys.exit(main())
