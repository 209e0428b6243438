"""Helpers every part of the agent may use; they import nothing else of the agent."""
