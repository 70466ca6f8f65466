"""Adapters between mentor_agents and agent frameworks or protocols, one subpackage each."""
