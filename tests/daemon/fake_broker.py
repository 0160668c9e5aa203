from tests.kit import T0, FakeBroker, intent  # noqa: F401  (the names moved to tests.kit)
