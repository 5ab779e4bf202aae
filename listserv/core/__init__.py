"""Configuration, database, models and the services every layer uses."""
