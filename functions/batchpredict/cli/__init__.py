"""The user's side: the ``batchpredict`` commands and what only they use (the stack client,
the output formats, the report, the predict API client, model import). The Lambda functions
never import this package, and ``make package`` leaves it out of what it ships."""

from batchpredict.cli import job_commands, local_commands, model_commands
from batchpredict.cli.group import main

__all__ = ["job_commands", "local_commands", "main", "model_commands"]
