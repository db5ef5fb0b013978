"""Wire contracts of tradeflow: events, subjects, envelope and codec — the single source of truth."""
