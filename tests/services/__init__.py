"""Real services for tests, started on free loopback ports by session fixtures and stopped after."""
