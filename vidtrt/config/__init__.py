"""Layer 0: what a model and a request are, as data: configs, request validation and its wire
format, component specs, tile plans, model families. No torch at import."""
