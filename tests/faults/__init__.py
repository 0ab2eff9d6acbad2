"""Fault-injection suite (issue 6): kill -9 and restart, broker outages and restarts, S3 faults,
a checkpointed soak. Infrastructure: :mod:`.proxy` (TCP outage/latency proxy), :mod:`.s3_faults`
(HTTP fault proxy in front of moto), :mod:`.verify` (a verifying sink), :mod:`.jobs` (the
checkpointed bootstrap job run in a subprocess).
"""
