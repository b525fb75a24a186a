"""What each node gets, as pure rules shared by the services, the gateway and the CLI.

The osquery config model (managed state, validation, targeting, composition, diffs,
rollout buckets) and the live-query percentage shard (`percentage_shard.py`), which the
distributed service and the gateway must compute alike.
"""
