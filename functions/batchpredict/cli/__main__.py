"""``python -m batchpredict.cli``: the ``batchpredict`` console script."""

from batchpredict.cli import main

main()
