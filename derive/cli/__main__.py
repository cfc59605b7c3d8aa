"""``python -m derive.cli``: the ``nfn-derive`` command."""

import sys

from derive.cli.main import main

sys.exit(main())
