"""Admin broadcasts: drafts, audience segments, and the durable runner paced under the platforms' flood limits.

Durable broadcasts: segments and their counts, recipients kept in the database, and a runner that sends each
announcement once per chat at the platform's rate without starving ordinary traffic. Callers import
`core.broadcast.service`, which gathers the names below.

How it fits together
--------------------
* `create_draft` / `update_draft` (drafts.py) keep what the admin composed (HTML text checked by markup.py,
  optional photo URL and link buttons, a `Segment`). `count_segments` (segments.py) tells how many chats a segment
  reaches and how many were left out and why (banned, opted out of announcements, unreachable), with one GROUP BY
  query.
* `start` (states.py) turns a draft into a running broadcast: one `BroadcastRecipient` per reachable chat identity
  of the segment, written with a single INSERT … SELECT (50,000 rows never pass through Python).
* `BroadcastRunner` (runner.py) sends running broadcasts. It takes a lease on each (`Broadcast.lease_owner/
  lease_until`), so two app instances never send the same one; it adopts running broadcasts whose lease lapsed
  (a restart, a crashed instance) and resumes from the recipients' states. Its lanes (sending.py) send as bulk
  traffic through each bot's one flood budget (core/platform/pacing.py); its bookkeeper (bookkeeping.py) commits
  outcomes through the recipient store (store.py) and keeps the progress card (progress.py) current.
"""
