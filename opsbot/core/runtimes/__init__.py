"""Runtime implementations: process (default), docker, swarm."""
