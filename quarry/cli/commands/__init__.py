"""The admin commands of `quarry`, one module per command group."""
