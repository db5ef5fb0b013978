"""The strategy agent."""
