"""One module per study; each exposes ``build_<model>(config) -> keras.Model`` (Functional API)."""
