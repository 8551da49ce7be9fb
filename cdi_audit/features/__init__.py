"""Membership-inference feature extractors (``../shared/spec/methods.md``), one file per method."""
