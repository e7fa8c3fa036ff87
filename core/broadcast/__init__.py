"""Admin broadcasts: drafts, audience segments, and the durable runner paced under the platforms' flood limits."""
