"""The osquery config model: managed state, validation, targeting, composition, diffs."""
