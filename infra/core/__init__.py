"""The bottom layer: the typed configuration, where a stack's services are, connecting, and the Docker host."""
