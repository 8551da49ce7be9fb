"""Renderers of an ``AuditResult``: they format numbers, they never compute them."""
