"""The result schema (the single source of truth every output renders) and the manifest of files read."""
