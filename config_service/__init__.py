"""Config service: versions the managed config state, rolls it out and evaluates labels."""
