"""content-ranker: the library behind the DAGs, the Feast repo and the BentoML service."""
