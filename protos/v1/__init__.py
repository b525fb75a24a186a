"""Version 1 of Quarry's service contracts (protobuf package `quarry.v1`)."""
