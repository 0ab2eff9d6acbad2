"""Test-suite wiring: real services come from ``tests/services`` (one plugin module per service).

Markers (strict): ``kafka`` (Tansu), ``apache_kafka`` (Apache Kafka 4), ``s3``, ``postgres``,
``iceberg``, ``kinesis`` (moto) for tests needing that service, ``slow`` for long suites (deselected by the README's
command: ``-m "not slow"``). ``broker`` (tests/services/brokers.py) runs a test on both Kafka
brokers, ids ``[apache]`` / ``[tansu]``.
"""

pytest_plugins = [
    "tests.services.ports",
    "tests.services.s3",
    "tests.services.kinesis",
    "tests.services.iceberg",
    "tests.services.kafka",
    "tests.services.apache_kafka",
    "tests.services.brokers",
    "tests.services.postgres",
]
