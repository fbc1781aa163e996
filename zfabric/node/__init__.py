"""The node process and the local clients (drivers, workers) that talk to it."""
