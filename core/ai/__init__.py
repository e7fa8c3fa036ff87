"""AI assistance: Groq with an offline fallback, prompts, and the service that opts users in and meters tokens."""
