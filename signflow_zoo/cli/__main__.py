"""``python -m signflow_zoo.cli``: the same as the ``signflow-zoo`` command."""

import sys

from signflow_zoo.cli.commands import main

sys.exit(main())
