"""The post-deploy core, plain Python: migrations, the checks, the registry, the password, the steps in order."""
