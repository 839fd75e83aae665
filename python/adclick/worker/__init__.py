"""The worker role (`adclick worker`): SQS click and conversion messages into the database, exactly once in effect.

- main.py: settings, signals, health server, N consumer tasks per queue.
- consumer.py: long poll, visibility extension, delete after commit, outage retries, SIGTERM drain.
- batches.py: one transaction per batch, poison messages split out and recorded in failed jobs.
- clicks.py: insert-or-ignore by ClickID, unique flag from Redis, hourly rollups.
- conversions.py: ClickID check, attribution, caps, status changes, rejections.
- commissions.py: CPA and RevShare money, pure.
- messages.py: `c1:` and `v1:` bodies; health.py: /health, /metrics.

Decisions, in one place:
- A body that cannot be decoded is recorded in failed jobs at every receive and left to SQS, which moves it to
  the dead-letter queue after maxReceiveCount (a newer worker may read what this one cannot).
- A message whose processing fails for a reason other than an outage is split out of its batch, recorded, and
  left to SQS the same way. An outage of the database or Redis is retried in-process instead (no receive is
  spent, nothing is recorded because recording needs the database).
- Forged, expired, duplicate and otherwise refused postbacks are rejections, recorded once, never retried.
- `pending` and `approved` conversions count in rollups and caps; `rejected` and `capped` do not.
"""
