"""Choosing: which strategy (`compare`, `--strategy auto`, cross-validation at few labels), which
source (`rank`, with the transferability scores LogME and LEEP), which L2-SP strength (the sweep).

Nothing here has a training loop of its own: it calls the engine."""
