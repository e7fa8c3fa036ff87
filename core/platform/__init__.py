"""Infrastructure every domain stands on: settings, database, clock, i18n, logging, metrics, scheduler, outbox."""
