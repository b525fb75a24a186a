"""Config service: validates, versions and publishes the osquery config document."""
