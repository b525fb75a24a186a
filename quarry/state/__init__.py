"""The state layer: the state directory, the state database, migrations, changes."""
