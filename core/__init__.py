"""CumApp's service layer: accounts, ledger, verification, messaging, numbers, AI, outbox and stats."""
