"""Phone verification: renting a temporary number, the hold-to-capture state machine, code extraction."""
