"""The stages run in order: one audit, one extraction, one evaluation, a batch of audits."""
