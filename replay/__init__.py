"""Event store, recorder, replay and what-if (see the open issue on the event store)."""
