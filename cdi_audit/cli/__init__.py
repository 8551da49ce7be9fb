"""The ``cdi-audit`` command line: parses options, calls the stages, chooses the exit code (see ``app``).

One module per command; they are registered here, in the order ``--help`` lists them.
"""

from cdi_audit.cli import batch, check, evaluate, evidence, extract, reports, serve
from cdi_audit.cli.app import app, main

for name, command in (("check", check.check), ("extract", extract.extract), ("batch", batch.batch),
                      ("evaluate", evaluate.evaluate), ("serve", serve.serve),
                      ("extract-evidence", evidence.extract_evidence), ("report", reports.report),
                      ("verify", reports.verify)):
    app.command(name)(command)

__all__ = ["app", "main"]
