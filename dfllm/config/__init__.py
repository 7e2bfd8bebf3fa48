"""Configuration: the option table, named engines (``create_engine``), models, secrets."""
