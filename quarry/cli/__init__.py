"""The `quarry` command: the cluster supervisor (`quarry up`) and the admin commands."""
