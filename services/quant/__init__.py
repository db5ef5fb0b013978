"""The quant agent."""
