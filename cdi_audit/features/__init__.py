"""Membership-inference feature extractors (docs/method.md, "The features"), one file per method."""
