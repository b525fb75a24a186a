"""What every Quarry process runs on: settings, logging, metrics endpoint, shutdown, tools."""
