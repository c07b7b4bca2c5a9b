"""Core: what every stage shares and nothing of Ray or MLflow touches (math, models, formats, contracts, the one
embedding path). Usable in a notebook; imports no runtime or stage module."""
