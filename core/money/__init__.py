"""Accounts and money: users and linking, the ledger (holds, captures, refunds), Stars payments, tier limits, history."""
