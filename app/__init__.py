"""The application layer: the ``mentor`` command (`mentor_agents.app.cli`), above the demo, the integrations and the
core."""
