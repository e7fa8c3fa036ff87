"""Message catalogs: each module holds `TEXTS = {"en": {...}, "es": {...}}` for one area of the product."""
