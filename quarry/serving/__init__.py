"""Running a service process: gRPC servers and channels, start-up, entry points."""
