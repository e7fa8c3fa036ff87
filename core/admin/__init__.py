"""What admins see and are told: statistics, health, deduplicated alerts and the audit log."""
