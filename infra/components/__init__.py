"""Pulumi components, one per concern: network, PostgreSQL, Redis, post-deploy step."""
