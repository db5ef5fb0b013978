"""The audit agent."""
