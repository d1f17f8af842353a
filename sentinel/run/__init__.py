"""`sentinel run`: the daemon and the services it starts."""
