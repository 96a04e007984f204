"""The caching math (taylor, relational), the methods' configs, and the engine that routes calls."""
